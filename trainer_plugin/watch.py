"""``Monitor.watch(model)``: which module's output first went non-finite, found without a sync.

A forward pre-hook and a forward hook on every module reduce each floating tensor among the
call's inputs and outputs to one 0-d device value, max |x| (``vector_norm(x, inf)``, a single
fused reduction: NaN if any element is NaN, +Inf if any is ±Inf, finite otherwise). Hooks fire
in execution order — a module's forward hook fires when its forward returns, so children come
before their parent — and each call appends its module's index and its values to the step's
list. A post-accumulate-grad hook on every trainable parameter does the same for its gradient,
in backward order (the order gradients were completed). Nothing is read here: at ``log_step``
the values are stacked, one tensor per device, into the step's single transfer, and the sender
thread resolves them (``trainvitals.trainer_plugin.origin``).

Cost per module call: two hook calls and one reduction per floating tensor in and out.
``trainvitals.trainer_plugin.watchcost.time_watch`` measures it on a given model.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import torch
from torch.utils.hooks import RemovableHandle

from trainvitals.protocol import NonFiniteOrigin
from trainvitals.trainer_plugin.optrace import CallRecorder, leaves, trace_call
from trainvitals.trainer_plugin.origin import ROOT, WatchFrame, locate
from trainvitals.trainer_plugin.staging import StepStaging

__all__ = ["MAX_VALUES", "ModuleWatch"]

log = logging.getLogger("trainvitals")
MAX_VALUES = 50_000  # per step; beyond it recording pauses until log_step (memory bound)


@dataclass(frozen=True)
class _TraceRequest:
    index: int
    call: int
    origin: NonFiniteOrigin


class ModuleWatch:
    """Hooks on every module and parameter of ``model``; ``remove()`` takes them all off.

    Module names are qualified with ``name`` (``model``, ``model.point_head``), parameters too
    (``model.point_head.weight``). With ``op_trace=True`` the root's last ``trace_window``
    steps of inputs are kept for one op-level re-run (see ``trainvitals.trainer_plugin.optrace``).
    """

    def __init__(self, model: torch.nn.Module, *, name: str = "model", op_trace: bool = False,
                 trace_window: int = 4) -> None:
        modules = list(model.named_modules())
        self.model = model
        self.names = tuple(_qualified(name, n) for n, _ in modules)
        self.types = tuple(type(m).__name__ for _, m in modules)
        params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.params = tuple(_qualified(name, n) for n, _ in params)
        self.removed = False
        self._recorder = CallRecorder(trace_window) if op_trace else None
        self._index = 0  # the watch's own step counter, for the recorder
        self._lock = threading.Lock()  # the sender thread judges, the training thread polls
        self._episode = False  # sender thread: inside a run of non-finite steps
        self._request: _TraceRequest | None = None
        self._traced = False
        self._tracing: list[int] | None = None  # the module stack while re-running
        self._reset()
        self._handles: list[RemovableHandle] = []
        for index, (_, module) in enumerate(modules):
            self._handles.append(module.register_forward_pre_hook(
                partial(self._before, index), with_kwargs=True))
            self._handles.append(module.register_forward_hook(
                partial(self._after, index), with_kwargs=True))
        for index, (_, param) in enumerate(params):
            self._handles.append(param.register_post_accumulate_grad_hook(  # type: ignore[no-untyped-call]
                partial(self._grad, index)))

    def remove(self) -> None:
        """Take every hook off; the watch records nothing more."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.removed = True
        self._reset()

    # ------------------------------------------------------------ hooks (training thread)

    def _reset(self) -> None:
        self._values: list[torch.Tensor] = []
        self._calls: list[tuple[int, int, int]] = []
        self._grad_values: list[torch.Tensor] = []
        self._grad_params: list[int] = []
        self._stack: list[list[torch.Tensor]] = []

    def _full(self) -> bool:
        return len(self._values) + len(self._grad_values) >= MAX_VALUES

    def _before(self, index: int, module: torch.nn.Module, args: tuple[Any, ...],
                kwargs: dict[str, Any]) -> None:
        if self._tracing is not None:
            self._tracing.append(index)
            return
        if index == ROOT and self._recorder is not None:
            self._recorder.record(self._index, args, kwargs)
        self._stack.append(_max_abs((args, kwargs)))

    def _after(self, index: int, module: torch.nn.Module, args: tuple[Any, ...],
               kwargs: dict[str, Any], output: Any) -> None:
        if self._tracing is not None:
            if self._tracing:
                self._tracing.pop()
            return
        # LIFO: a forward that raised left its inputs below; the next call pops its own.
        inputs = self._stack.pop() if self._stack else []
        if self._full():
            return
        outputs = _max_abs(output)
        self._values += inputs
        self._values += outputs
        self._calls.append((index, len(inputs), len(outputs)))

    def _grad(self, index: int, param: torch.Tensor) -> None:
        grad = param.grad
        if grad is None or grad.layout != torch.strided or self._full():
            return
        self._grad_values.append(torch.linalg.vector_norm(grad.detach(), ord=float("inf")))
        self._grad_params.append(index)

    # ------------------------------------------------------------ step boundary

    def seal(self, staging: StepStaging, key: str) -> WatchFrame:
        """Stage this step's values (one stacked tensor per device) and start the next step."""
        values = self._values + self._grad_values
        by_device: dict[torch.device, list[int]] = {}
        for position, value in enumerate(values):
            by_device.setdefault(value.device, []).append(position)
        parts: list[tuple[str, tuple[int, ...] | None]] = []
        for n, positions in enumerate(by_device.values()):
            staging.add(f"{key}/{n}", torch.stack([values[p] for p in positions]))
            parts.append((f"{key}/{n}", None if len(by_device) == 1 else tuple(positions)))
        frame = WatchFrame(self.names, self.types, self.params, self._index, tuple(self._calls),
                           tuple(self._grad_params), tuple(parts), len(values))
        self._index += 1
        self._reset()
        return frame

    def judge(self, frame: WatchFrame, staged: dict[str, list[float]],
              step: int) -> NonFiniteOrigin | None:
        """Sender thread: the origin of a new run of non-finite steps, else None."""
        if not frame.width:
            return None  # no forward or backward since the last step: says nothing
        found = locate(frame, frame.values(staged))
        with self._lock:
            if found is None or self._episode:
                self._episode = found is not None
                return None
            self._episode = True
            origin = NonFiniteOrigin(step=step, kind=found.kind, stage=found.stage,
                                     module=found.module, module_type=found.module_type,
                                     param=found.param)
            if self._recorder is not None and not self._traced and found.stage == "forward":
                self._traced = True  # once per run
                self._request = _TraceRequest(frame.index, found.call, origin)
            return origin

    def may_trace(self) -> bool:
        """Whether an op-level trace is on and has not been requested yet."""
        with self._lock:
            return self._recorder is not None and not self._traced and not self.removed

    def poll(self) -> NonFiniteOrigin | None:
        """Training thread: run a requested op-level trace now; its origin, if it found one."""
        with self._lock:
            request, self._request = self._request, None
        if request is None or self._recorder is None:
            return None
        call = self._recorder.get(request.index, request.call)
        if call is None:
            log.warning("trainvitals: the inputs of step %d are no longer kept (trace_window="
                        "%d); no op-level trace", request.origin.step, self._recorder.window)
            return None
        self._tracing = []
        try:
            found = trace_call(self.model, call, self._current_module)
        except Exception:  # the re-run is a diagnosis: it must never break the training
            log.exception("trainvitals: the op-level re-run of step %d failed",
                          request.origin.step)
            return None
        finally:
            self._tracing = None
        if found is None:
            log.warning("trainvitals: re-running step %d produced no non-finite value from "
                        "finite inputs (parameters changed since?)", request.origin.step)
            return None
        module = request.origin.module if found.module is None else self.names[found.module]
        module_type = (request.origin.module_type if found.module is None
                       else self.types[found.module])
        return replace(request.origin, kind=found.kind, module=module, module_type=module_type,
                       op=found.op, source=found.source)

    def _current_module(self) -> int | None:
        return self._tracing[-1] if self._tracing else None


def _max_abs(obj: Any) -> list[torch.Tensor]:
    """max |x| of every non-empty floating tensor in ``obj``: one fused reduction each."""
    tensors = [t.detach() for t in leaves(obj)
               if (t.is_floating_point() or t.is_complex()) and t.numel() > 0
               and t.layout == torch.strided]
    if len(tensors) == 1:
        return [torch.linalg.vector_norm(tensors[0], ord=float("inf"))]
    return list(torch._foreach_norm(tensors, ord=float("inf"))) if tensors else []


def _qualified(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if name else prefix
