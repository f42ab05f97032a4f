"""``Monitor.watch(model)``: which module's output first went non-finite, found without a sync.

Two ways, chosen by the model's device (``trainvitals.trainer_plugin.values.devices``), with one
contract: when an output of the model or a gradient goes non-finite, the step's record names
the first module (execution order) whose output went non-finite while its inputs were finite,
and the first parameter (backward order) whose gradient went non-finite.

* **On the device** (CUDA and other asynchronous devices, where reading a value would stall
  the stream): a forward pre-hook and a forward hook on every module reduce each floating
  tensor among the call's inputs and outputs to one 0-d device value, max |x|
  (``vector_norm(x, inf)``: NaN if any element is NaN, +Inf if any is ±Inf). Hooks fire in
  execution order — a module's forward hook fires when its forward returns, so children come
  before their parent. A post-accumulate-grad hook on every trainable parameter does the same
  for its gradient, in backward order. Nothing is read here: at ``log_step`` the values go,
  one stacked tensor per device, into the step's single transfer, and the sender thread
  resolves them (``trainvitals.trainer_plugin.watch.origin``). Cost per module call: two hook calls
  and one reduction per floating tensor in and out, every step.
* **On the CPU** (reading is free): only the model itself and its parameters are hooked; every
  step reads whether the model's inputs, outputs and gradients are finite, and only a step
  that starts a run of non-finite steps is re-run, at once, with every module hooked
  (``trainvitals.trainer_plugin.watch.host``). Cost per step: one reduction per model output,
  one for all gradients, and a hook call per parameter.

``trainvitals.trainer_plugin.watch.cost.time_watch`` measures the cost on a given model.
"""

from __future__ import annotations

import itertools
import logging
import threading
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import torch
from torch.utils.hooks import RemovableHandle

from trainvitals.protocol import NonFiniteOrigin
from trainvitals.trainer_plugin.values.devices import (
    compiling,
    eager_when_alone,
    local,
    reads_now,
)
from trainvitals.trainer_plugin.values.staging import StepStaging
from trainvitals.trainer_plugin.watch.host import HostSteps, watched_tensors
from trainvitals.trainer_plugin.watch.optrace import (
    CallRecorder,
    OpFinding,
    record_call,
    rerun,
    trace_call,
)
from trainvitals.trainer_plugin.watch.origin import ROOT, WatchFrame, locate

__all__ = ["MAX_VALUES", "ModuleWatch"]

log = logging.getLogger("trainvitals")
MAX_VALUES = 50_000  # per step; beyond it recording pauses until log_step (memory bound)


@dataclass(frozen=True)
class _TraceRequest:
    index: int
    call: int
    origin: NonFiniteOrigin


class ModuleWatch:
    """Hooks on ``model`` and its parameters (every module on the device path); ``remove()``
    takes them all off.

    Module names are qualified with ``name`` (``model``, ``model.point_head``), parameters too
    (``model.point_head.weight``). With ``op_trace=True`` the root's last ``trace_window``
    steps of inputs are kept for one op-level re-run (see ``watch.optrace``).
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
        self._modules = [m for _, m in modules]
        self._recorder = CallRecorder(trace_window) if op_trace else None
        self._index = 0  # the watch's own step counter, for the recorder
        self._lock = threading.Lock()  # the sender thread judges, the training thread polls
        self._episode = False  # sender thread: inside a run of non-finite steps
        self._request: _TraceRequest | None = None
        self._traced = False
        self._tracing: list[int] | None = None  # the module stack while re-running
        self._host = HostSteps()  # what the CPU path read this step
        self._went_bad = False  # CPU path: the last active step was non-finite
        self._forward_went_bad = False  # CPU path: ...and its forward made it
        self._episode_stage = ""  # sender thread: where the current episode began
        self._early: dict[int, OpFinding] = {}  # CPU path: op traces taken at once, by step
        self._fresh: set[int] = set()  # CPU path: steps whose forward made the first NaN/Inf
        self._reset()
        self._handles = [model.register_forward_pre_hook(partial(self._before, ROOT),
                                                         with_kwargs=True),
                         model.register_forward_hook(partial(self._after, ROOT),
                                                     with_kwargs=True)]
        for index, (_, param) in enumerate(params):
            self._handles.append(param.register_post_accumulate_grad_hook(  # type: ignore[no-untyped-call]
                partial(self._grad, index)))
        self._module_handles: list[RemovableHandle] = []
        # .to()/.cuda() move a parameter's data, not the parameter: its device stays current.
        self._probe = next(itertools.chain(model.parameters(), model.buffers()), None)
        # A sharded model (FSDP) gathers its parameters in its forward, a collective: re-running
        # the forward on one rank (the CPU path's localisation, the op tracer) would hang the
        # others or break the process group. It takes the device path: no re-run, ever.
        self._collective = runs_collectives(model)
        self.reads_now = self._choose()

    def remove(self) -> None:
        """Take every hook off; the watch records nothing more."""
        for handle in self._handles + self._module_handles:
            handle.remove()
        self._handles.clear()
        self._module_handles.clear()
        self.removed = True
        self._reset()
        self._host.reset()

    def recorded(self) -> int:
        """How many values this step has recorded so far (on the device or read)."""
        return len(self._values) + len(self._grad_values) + len(self._host)

    # ------------------------------------------------------------ which way

    def _choose(self) -> bool:
        """The CPU path for a model whose parameters (or buffers) live where reads are free;
        module hooks on for the device path, off for the CPU path."""
        probe = self._probe
        host = (not self._host.saw_device and not self._collective
                and (probe is None or reads_now(probe)))
        self._hook_modules(not host)
        return host

    def _hook_modules(self, on: bool) -> None:
        if on and not self._module_handles and not self.removed:
            for index, module in enumerate(self._modules[1:], start=1):
                self._module_handles += [
                    module.register_forward_pre_hook(partial(self._before, index),
                                                     with_kwargs=True),
                    module.register_forward_hook(partial(self._after, index),
                                                 with_kwargs=True)]
        elif not on:
            for handle in self._module_handles:
                handle.remove()
            self._module_handles.clear()

    # ------------------------------------------------------------ hooks (training thread)

    def _reset(self) -> None:
        self._compiled = False  # this step's forward ran inside a torch.compile graph
        self._values: list[torch.Tensor] = []
        self._calls: list[tuple[int, int, int]] = []
        self._grad_values: list[torch.Tensor] = []
        self._grad_params: list[int] = []
        self._stack: list[list[torch.Tensor]] = []

    def _full(self) -> bool:
        return self.recorded() >= MAX_VALUES

    @eager_when_alone
    def _before(self, index: int, module: torch.nn.Module, args: tuple[Any, ...],
                kwargs: dict[str, Any]) -> None:
        if compiling():  # traced into a torch.compile graph: the device path, no RNG reads
            self._compiled = True
            self._stack.append(_max_abs((args, kwargs)))
        elif self._tracing is not None:
            self._tracing.append(index)
        elif not self.reads_now or self._module_handles:  # every module: device path, re-run
            if index == ROOT and self._recorder is not None and not self.reads_now:
                self._recorder.record(self._index, args, kwargs)
            self._stack.append(_max_abs((args, kwargs)))
        else:
            call = record_call(args, kwargs)
            if self._recorder is not None:
                self._recorder.keep(self._index, call)
            self._host.root_starts(call)

    @eager_when_alone
    def _after(self, index: int, module: torch.nn.Module, args: tuple[Any, ...],
               kwargs: dict[str, Any], output: Any) -> None:
        if self._tracing is not None and not compiling():
            if self._tracing:
                self._tracing.pop()
        elif compiling() or not self.reads_now or self._module_handles:
            # LIFO: a forward that raised left its inputs below; the next call pops its own.
            inputs = self._stack.pop() if self._stack else []
            if self._full():
                return
            outputs = _max_abs(output)
            self._values += inputs
            self._values += outputs
            self._calls.append((index, len(inputs), len(outputs)))
        elif not self._full() and self._host.root_ends(output):
            self._localise(forward=True)

    def _grad(self, index: int, param: torch.Tensor) -> None:
        grad = param.grad
        if grad is None:
            return
        grad = local(grad)  # FSDP2: this rank's shard (no collective in a hook)
        if self.reads_now and not self._compiled:  # read with the others at the end
            self._host.grad_refs.append((index, grad))
            if not self._host.end_queued:
                self._host.end_queued = True
                torch.autograd.Variable._execution_engine.queue_callback(self._backward_ends)
        elif grad.layout == torch.strided and grad.numel() > 0 and not self._full():
            self._grad_values.append(torch.linalg.vector_norm(grad.detach(), ord=float("inf")))
            self._grad_params.append(index)

    # ------------------------------------------------------------ the CPU path's re-run

    def _backward_ends(self) -> None:
        try:
            if self._host.backward_ends() and not self.removed:
                self._localise(forward=False)
        except Exception:  # a diagnosis must never break the training's backward pass
            log.exception("trainvitals: reading the gradients failed")

    def _localise(self, *, forward: bool) -> None:
        """A non-finite output or gradient: if it starts an episode, re-run the step's forward
        now, every module hooked, to see where it began (parameters are still as they were).

        A forward that makes a non-finite value for the first time is located even when the
        step before went bad elsewhere (a loss that overflowed, NaN gradients): that step's
        forward was finite, so this is where the model itself first made one."""
        blocked = self._forward_went_bad if forward else self._went_bad
        if blocked or self._host.localised or self._host.saw_device:
            return  # the origin of this run of non-finite steps is known, or cannot be
        if forward and self._went_bad and not self._parameters_finite():
            return  # the bad step's update made the weights non-finite: a consequence
        self._host.localised = True
        if forward:
            if self._went_bad:
                with self._lock:
                    self._fresh.add(self._index)
            self._trace_now()
        self._hook_modules(True)
        try:
            for call in list(self._host.recorded):
                rerun(self.model, call)
            values = torch.stack(self._values).tolist() if self._values else []
            if not self._host.replace(self._calls, values):
                log.warning("trainvitals: re-running step %d did not repeat its non-finite "
                            "values; its origin is named at the model level", self._index)
        except Exception:  # the re-run is a diagnosis: it must never break the training
            log.exception("trainvitals: re-running step %d to locate its non-finite values "
                          "failed", self._index)
        finally:
            self._hook_modules(False)
            self._reset()

    def _parameters_finite(self) -> bool:
        """CPU path: whether every parameter is finite now (reading is free here)."""
        with torch.no_grad():
            return all(bool(torch.isfinite(p).all()) for p in self.model.parameters())

    def _trace_now(self) -> None:
        """CPU path, ``op_trace=True``: trace the op now, before the optimizer changes the
        parameters (a trace taken steps later may find nothing, or the wrong op)."""
        call = self._host.recorded[-1] if self._host.recorded else None
        if self._recorder is None or call is None or not self.may_trace():
            return
        found = self._trace(call, self._index)
        if found is not None:
            with self._lock:
                self._early[self._index] = found

    def _trace(self, call: Any, step: int) -> OpFinding | None:
        """Re-run ``call`` under the op tracer, the module stack naming the module of the op."""
        hooked = bool(self._module_handles)
        self._tracing = []
        self._hook_modules(True)
        try:
            return trace_call(self.model, call, self._current_module)
        except Exception:  # the re-run is a diagnosis: it must never break the training
            log.exception("trainvitals: the op-level re-run of step %d failed", step)
            return None
        finally:
            self._tracing = None
            self._hook_modules(hooked or not self.reads_now)

    # ------------------------------------------------------------ step boundary

    def seal(self, staging: StepStaging, key: str) -> WatchFrame:
        """Stage this step's values (one stacked tensor per device) and start the next step."""
        if self.reads_now and not self._compiled:
            forward_bad = self._host.forward_bad
            calls, values, grads, grad_values, bad = self._host.take()
            frame = WatchFrame(self.names, self.types, self.params, self._index, tuple(calls),
                               tuple(grads), (), len(values) + len(grad_values),
                               tuple(values + grad_values))
            if frame.active:
                self._went_bad = bad  # what judge() will find: locate(frame) is not None
                self._forward_went_bad = forward_bad
        else:
            frame = self._stage(staging, key)
        self._index += 1
        self._reset()
        self.reads_now = self._choose()
        return frame

    def _stage(self, staging: StepStaging, key: str) -> WatchFrame:
        values = self._values + self._grad_values
        by_device: dict[torch.device, list[int]] = {}
        for position, value in enumerate(values):
            by_device.setdefault(value.device, []).append(position)
        parts: list[tuple[str, tuple[int, ...] | None]] = []
        for n, positions in enumerate(by_device.values()):
            staging.add(f"{key}/{n}", torch.stack([values[p] for p in positions]))
            parts.append((f"{key}/{n}", None if len(by_device) == 1 else tuple(positions)))
        return WatchFrame(self.names, self.types, self.params, self._index, tuple(self._calls),
                          tuple(self._grad_params), tuple(parts), len(values))

    def judge(self, frame: WatchFrame, staged: dict[str, list[float]],
              step: int) -> NonFiniteOrigin | None:
        """Sender thread: the origin of a new run of non-finite steps, else None."""
        if not frame.active:
            return None  # no forward or backward since the last step: says nothing
        found = locate(frame, frame.values(staged))
        with self._lock:
            early = self._early.pop(frame.index, None)
            self._early = {i: f for i, f in self._early.items() if i > frame.index}
            fresh = frame.index in self._fresh
            self._fresh = {i for i in self._fresh if i > frame.index}
            if found is None:
                self._episode = False
                return None
            # Inside a run of non-finite steps only the first forward-made value is news: the
            # run may have begun elsewhere (the loss, the gradients) with a finite forward.
            # (The CPU path knows it: the weights were still finite. The device path cannot
            # read them without a sync, so it keeps the episode's first origin.)
            if self._episode and not (fresh and found.stage == "forward"
                                      and self._episode_stage != "forward"):
                return None
            self._episode, self._episode_stage = True, found.stage
            origin = NonFiniteOrigin(step=step, kind=found.kind, stage=found.stage,
                                     module=found.module, module_type=found.module_type,
                                     param=found.param)
            if self._recorder is not None and not self._traced and found.stage == "forward":
                self._traced = True  # once per run
                if early is not None:  # the CPU path traced it before the optimizer step
                    return self._with_op(origin, early)
                self._request = _TraceRequest(frame.index, found.call, origin)
            return origin

    def may_trace(self) -> bool:
        """Whether an op-level trace is on and has not been requested yet."""
        with self._lock:
            return (self._recorder is not None and not self._traced and not self.removed
                    and not self._collective)

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
        found = self._trace(call, request.origin.step)
        if found is None:
            log.warning("trainvitals: re-running step %d produced no non-finite value from "
                        "finite inputs (parameters changed since?)", request.origin.step)
            return None
        return self._with_op(request.origin, found)

    def _with_op(self, origin: NonFiniteOrigin, found: OpFinding) -> NonFiniteOrigin:
        module = origin.module if found.module is None else self.names[found.module]
        module_type = origin.module_type if found.module is None else self.types[found.module]
        return replace(origin, kind=found.kind, module=module, module_type=module_type,
                       op=found.op, source=found.source)

    def _current_module(self) -> int | None:
        return self._tracing[-1] if self._tracing else None


def _max_abs(obj: Any) -> list[torch.Tensor]:
    """max |x| of every watched tensor in ``obj``: one fused reduction each, on its device."""
    tensors = list(watched_tensors(obj))
    if len(tensors) == 1:
        return [torch.linalg.vector_norm(tensors[0], ord=float("inf"))]
    return list(torch._foreach_norm(tensors, ord=float("inf"))) if tensors else []


def _qualified(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if name else prefix


def runs_collectives(model: torch.nn.Module) -> bool:
    """Whether ``model``'s forward runs collectives: sharded by FSDP2 (``fully_shard``: DTensor
    parameters, modules that ``unshard``) or wrapped by FSDP1 (``FullyShardedDataParallel``)."""
    if any(hasattr(p, "placements") for p in model.parameters()):
        return True
    return any((hasattr(m, "unshard") and hasattr(m, "reshard"))
               or type(m).__name__ == "FullyShardedDataParallel" for m in model.modules())
