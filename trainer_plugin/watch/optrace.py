"""Op-level tracing: re-run one recorded forward and name the op that first went non-finite.

With ``watch(model, op_trace=True)`` the root module's forward pre-hook keeps, for the last
few steps, references to its inputs (detached, not copied) together with the CPU and CUDA RNG
states and the autocast settings of the moment. When the sender thread has found a step's
origin, the next ``log_step`` re-runs that forward once under ``OpTracer`` (a
``TorchFunctionMode``):

* with the recorded RNG states (and the training's own RNG states restored afterwards), so
  dropout draws the same masks;
* under ``torch.no_grad()``: no graph, no gradients, parameters and optimizer untouched;
* with every buffer saved first and copied back after, so BatchNorm running statistics (and
  ``num_batches_tracked``) are left as they were; ``train()``/``eval()`` is not changed,
  because eval would change what the forward computes.

The parameters are those of the moment of the re-run, not of the recorded step: if the
optimizer already applied a non-finite update, every op sees non-finite parameters, nothing
qualifies as an origin and the trace reports nothing (the module-level origin stands).
"""

from __future__ import annotations

import math
import os
import sys
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, suppress
from dataclasses import dataclass
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

from trainvitals.protocol.messages import NonFiniteKind

__all__ = ["CallRecorder", "OpFinding", "OpTracer", "RecordedCall", "leaves", "record_call",
           "rerun", "trace_call"]

MAX_CALLS_PER_STEP = 16  # root forwards kept per step (gradient accumulation micro-batches)
_SKIPPED_DIRS = (os.path.dirname(torch.__file__) + os.sep,
                 os.path.dirname(os.path.abspath(__file__)) + os.sep)
# Uninitialised memory may hold anything, NaN included: not an origin.
_UNINITIALISED = {torch.empty, torch.empty_like, torch.empty_strided, torch.Tensor.new_empty}


@dataclass(frozen=True)
class RecordedCall:
    """One root forward's inputs (references) and the random and autocast state it ran under."""

    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    cpu_rng: torch.Tensor
    cuda_rng: tuple[torch.Tensor, ...]
    autocast: tuple[tuple[str, torch.dtype], ...]


class CallRecorder:
    """The root forwards of the last ``window`` steps; memory: those steps' input batches."""

    def __init__(self, window: int) -> None:
        self.window = window
        self._steps: OrderedDict[int, list[RecordedCall]] = OrderedDict()

    def record(self, step_index: int, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Keep this root call of step ``step_index`` (no device work, no copy of the data)."""
        self.keep(step_index, record_call(args, kwargs))

    def keep(self, step_index: int, call: RecordedCall) -> None:
        """Keep an already recorded root call of step ``step_index``."""
        calls = self._steps.setdefault(step_index, [])
        while len(self._steps) > self.window:
            self._steps.popitem(last=False)
        if len(calls) < MAX_CALLS_PER_STEP:
            calls.append(call)

    def get(self, step_index: int, call: int) -> RecordedCall | None:
        """The ``call``-th root forward of step ``step_index``, if still kept."""
        calls = self._steps.get(step_index, [])
        return calls[call] if 0 <= call < len(calls) else None


@dataclass(frozen=True)
class OpFinding:
    """The op that first turned finite inputs into a non-finite output, and where it was called."""

    op: str
    source: str | None
    module: int | None
    kind: NonFiniteKind


class _Found(Exception):
    """Stops the re-run at the first finding: nothing after it can be the origin."""


class OpTracer(TorchFunctionMode):
    """Checks every torch function's tensor inputs and outputs (a host sync per op: once per run).

    An op qualifies when its tensor inputs were all finite and its output was not, unless it was
    asked for ±Inf/NaN by a non-finite Python number (``masked_fill(mask, -inf)``) or returns
    uninitialised memory. ``current_module`` names the innermost module running.
    """

    def __init__(self, current_module: Callable[[], int | None]) -> None:
        super().__init__()
        self.current_module = current_module
        self.found: OpFinding | None = None

    def __torch_function__(self, func: Any, types: Any, args: Any = (),
                           kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if self.found is not None or func in _UNINITIALISED or _asks_nonfinite(args, kwargs):
            return func(*args, **kwargs)
        clean = _kind((args, kwargs)) is None  # before the call: in-place ops change inputs
        out = func(*args, **kwargs)
        kind = _kind(out) if clean else None
        if kind is not None:
            self.found = OpFinding(_op_name(func), _user_source(), self.current_module(), kind)
            raise _Found
        return out


def record_call(args: tuple[Any, ...], kwargs: dict[str, Any]) -> RecordedCall:
    """A root forward's inputs (detached references) and its random and autocast state."""
    return RecordedCall(_detached(args), _detached(kwargs), torch.get_rng_state(), _cuda_rng(),
                        _autocast())


def trace_call(model: torch.nn.Module, call: RecordedCall,
               current_module: Callable[[], int | None]) -> OpFinding | None:
    """Re-run ``call`` on ``model`` under ``OpTracer``; see the module docstring."""
    tracer = OpTracer(current_module)
    with suppress(_Found):  # the tracer stops the re-run at its finding
        rerun(model, call, tracer)
    return tracer.found


def rerun(model: torch.nn.Module, call: RecordedCall,
          mode: AbstractContextManager[Any] | None = None) -> None:
    """Run ``call``'s forward again (inside ``mode``, if given) with its RNG state and autocast
    settings, under ``no_grad``, putting back the buffers and the training's RNG state after."""
    saved = [(b, b.detach().clone()) for b in model.buffers()]
    devices = list(range(len(call.cuda_rng)))
    try:
        with torch.random.fork_rng(devices=devices), torch.no_grad(), ExitStack() as stack:
            torch.set_rng_state(call.cpu_rng)
            if call.cuda_rng:
                torch.cuda.set_rng_state_all(list(call.cuda_rng))
            for device_type, dtype in call.autocast:
                stack.enter_context(torch.autocast(device_type, dtype=dtype))
            if mode is not None:
                stack.enter_context(mode)
            model(*call.args, **call.kwargs)
    finally:
        with torch.no_grad():
            for buffer, copy in saved:
                buffer.copy_(copy)


def leaves(obj: Any) -> Iterator[torch.Tensor]:
    """The tensors in nested tuples, lists and dicts (values), in order."""
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for item in obj:
            yield from leaves(item)
    elif isinstance(obj, dict):
        for item in obj.values():
            yield from leaves(item)


def _kind(obj: Any) -> NonFiniteKind | None:
    found: NonFiniteKind | None = None
    for t in leaves(obj):
        if t.numel() == 0 or not (t.is_floating_point() or t.is_complex()):
            continue
        if bool(torch.isnan(t).any()):
            return "nan"
        if found is None and not bool(torch.isfinite(t).all()):
            found = "inf"
    return found


def _asks_nonfinite(args: Any, kwargs: Any) -> bool:
    todo: list[Any] = [args, kwargs]
    while todo:
        item = todo.pop()
        if isinstance(item, float) and not math.isfinite(item):
            return True
        if isinstance(item, (list, tuple)):
            todo.extend(item)
        elif isinstance(item, dict):
            todo.extend(item.values())
    return False


def _op_name(func: Any) -> str:
    name = str(getattr(func, "__name__", repr(func)))
    return name.strip("_") or name  # __truediv__ → truediv


def _user_source() -> str | None:
    """``path:line in function`` of the innermost frame outside torch and trainvitals' plugin."""
    frame = sys._getframe(1)
    while frame is not None:
        path = frame.f_code.co_filename
        if not path.startswith(_SKIPPED_DIRS):
            return f"{path}:{frame.f_lineno} in {frame.f_code.co_name}"
        frame = frame.f_back  # type: ignore[assignment]
    return None


def _detached(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach()  # a reference to the same data: holding it holds no graph
    if isinstance(obj, tuple) and not hasattr(obj, "_fields"):
        return tuple(_detached(item) for item in obj)
    if isinstance(obj, list):
        return [_detached(item) for item in obj]
    if isinstance(obj, dict) and type(obj) is dict:
        return {key: _detached(item) for key, item in obj.items()}
    return obj


def _cuda_rng() -> tuple[torch.Tensor, ...]:
    if not torch.cuda.is_available() or not torch.cuda.is_initialized():  # type: ignore[no-untyped-call]
        return ()
    return tuple(torch.cuda.get_rng_state_all())  # seed and offset: host data, no sync


def _autocast() -> tuple[tuple[str, torch.dtype], ...]:
    return tuple((device, torch.get_autocast_dtype(device)) for device in ("cpu", "cuda")
                 if torch.is_autocast_enabled(device))
