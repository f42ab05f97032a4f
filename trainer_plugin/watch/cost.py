"""What ``Monitor.watch`` costs the training thread: the same steps timed without and with it.

For the benchmark suite::

    from trainvitals.trainer_plugin.watch.cost import time_watch
    cost = time_watch(model, batch, steps=50)
    print(cost.plain_s, cost.watched_s, cost.overhead)

Each step is a forward, a backward of the mean of the floating outputs, and ``log_step`` on a
``Monitor(server=None, spool=None)``, so only the training thread's share is measured (the
sender thread's resolution runs elsewhere). On CUDA the device is synchronised around each
timed run — here, in the benchmark, never in the plugin.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from trainvitals.trainer_plugin.values.staging import StepStaging
from trainvitals.trainer_plugin.watch.modules import ModuleWatch
from trainvitals.trainer_plugin.watch.optrace import leaves

__all__ = ["WatchCost", "time_watch"]


@dataclass(frozen=True)
class WatchCost:
    """Seconds per step without and with the watch, what was hooked, and the values it
    records per step (on the CPU: the model's outputs and the gradients; on the device: every
    module's inputs and outputs, and the gradients)."""

    plain_s: float
    watched_s: float
    modules: int
    params: int
    values_per_step: int

    @property
    def overhead(self) -> float:
        """Relative cost of the watch: 0.25 means steps took 25% longer."""
        return self.watched_s / self.plain_s - 1 if self.plain_s > 0 else float("nan")


def time_watch(model: torch.nn.Module, batch: Any, *, steps: int = 20, warmup: int = 3,
               op_trace: bool = False) -> WatchCost:
    """Time ``steps`` training steps of ``model`` on ``batch`` (a tensor, or a tuple of
    positional arguments) without and then with ``Monitor.watch``; gradients are discarded."""
    from trainvitals.trainer_plugin.monitor import Monitor

    args = batch if isinstance(batch, tuple) else (batch,)
    mon = Monitor("watch-cost", server=None, spool=None)  # sends and keeps nothing
    try:
        plain = _time(lambda: _step(model, args), steps, warmup, _sync(model))
        watch = mon.watch(model, op_trace=op_trace)
        step = iter(range(1 << 62))

        def watched() -> None:
            _step(model, args)
            mon.log_step(next(step))

        values = _values_per_step(watch, model, args)
        with_watch = _time(watched, steps, warmup, _sync(model))
        watch.remove()
    finally:
        mon.close()
    return WatchCost(plain, with_watch, len(watch.names), len(watch.params), values)


def _step(model: torch.nn.Module, args: tuple[Any, ...]) -> None:
    outputs = [t for t in leaves(model(*args)) if t.is_floating_point() and t.requires_grad]
    if outputs:
        torch.autograd.backward(torch.stack([t.float().mean() for t in outputs]).sum())
    model.zero_grad(set_to_none=True)


def _values_per_step(watch: ModuleWatch, model: torch.nn.Module, args: tuple[Any, ...]) -> int:
    _step(model, args)
    count = watch.recorded()
    watch.seal(StepStaging(), "count")  # nothing staged is read: it only empties the watch
    return count


def _sync(model: torch.nn.Module) -> Callable[[], None]:
    devices = {p.device for p in model.parameters() if p.device.type == "cuda"}

    def sync() -> None:
        for device in devices:
            torch.cuda.synchronize(device)

    return sync


def _time(fn: Callable[[], None], steps: int, warmup: int, sync: Callable[[], None]) -> float:
    for _ in range(warmup):
        fn()
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    sync()
    return (time.perf_counter() - start) / max(steps, 1)
