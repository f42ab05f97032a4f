"""``attach(model, optimizer)``: vital signs for an existing loop with one call and no edits.

    handle = trainvitals.attach(model, optimizer, run="pi3", loss_module=criterion)
    for batch in loader:                      # the loop stays as it was
        loss = criterion(model(batch.x), batch.y)
        loss.backward(); clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step(); optimizer.zero_grad()
    handle.close()

Each ``optimizer.step()`` that runs ends a step (an optimizer step post hook); its record is
sent when the model's next forward begins, or at ``detach()``/``close()``. Without a line in the
loop it carries the pre-clip gradient norm (gradient hooks), the norm applied by the optimizer
(``grad_norm_post``), the learning rate, ``Monitor.watch(model)`` (where NaN/Inf start),
``Monitor.watch_optimizer`` (updates, dead and frozen parameters) and whatever ``mon.tensor``
staged. The raw loss joins through a forward hook on ``loss_module`` or ``handle.loss(value)``;
``handle.clip_guard`` replaces ``if loss > clip: loss = loss * 0.0`` (one edited line) and adds
clip events and the loss used. With an Accelerate ``accelerator`` the loss used comes from its
``backward`` and the exact pre-clip norm from its ``clip_grad_norm_`` (see ``for_accelerate``).
"""

from __future__ import annotations

import atexit
from collections.abc import Callable, Collection, Mapping
from importlib import import_module
from types import TracebackType
from typing import Any

import torch

from trainvitals.trainer_plugin.adapters.recorder import StepRecorder
from trainvitals.trainer_plugin.adapters.values import Number
from trainvitals.trainer_plugin.monitor import Monitor
from trainvitals.trainer_plugin.values.clip import OnNonFinite

__all__ = ["Attachment", "attach", "own_monitor"]


class Attachment:
    """What ``attach`` returns: ``loss``, ``clip_guard``, ``log``, ``detach``, ``close``."""

    def __init__(self, monitor: Monitor, recorder: StepRecorder,
                 removers: list[Callable[[], None]]) -> None:
        self.monitor, self.recorder, self._removers = monitor, recorder, removers
        self.detached = False
        atexit.register(self.detach)  # runs before the Monitor's own atexit close (LIFO)

    @property
    def step(self) -> int:
        """The number the next optimizer step will be recorded under."""
        return self.recorder.next_step

    def loss(self, value: Number, used: Number | None = None) -> None:
        """The one optional call: this step's raw loss (and, if known, the loss used)."""
        self.recorder.raw_loss(value)
        if used is not None:
            self.recorder.used_loss(used)

    def clip_guard(self, loss: torch.Tensor, threshold: float,
                   components: Mapping[str, Number] | None = None, *,
                   on_nonfinite: OnNonFinite = "pass") -> torch.Tensor:
        """Replaces ``if loss > threshold: loss = loss * 0.0`` (same result, on the device)."""
        return self.recorder.clip_guard(loss, threshold, components, on_nonfinite=on_nonfinite)

    def log(self, values: Mapping[str, Any]) -> None:
        """Extra scalars for the current step (numbers and 0-d tensors)."""
        self.recorder.add_scalars(values)

    def add_remover(self, remove: Callable[[], None]) -> None:
        """Have ``detach()`` also call ``remove`` (an adapter's own unwrapping)."""
        self._removers.append(remove)

    def detach(self) -> None:
        """Send the last step's record and take every hook and wrapper off."""
        if self.detached:
            return
        self.detached = True
        atexit.unregister(self.detach)
        self.recorder.remove()
        for remove in self._removers:
            remove()

    def close(self, status: str = "finished", reason: str = "") -> None:
        """``detach()``, then end the run (``Monitor.close``) even if the monitor was given."""
        self.detach()
        self.monitor.close(status=status, reason=reason)

    def __enter__(self) -> Attachment:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc is None:
            self.close()
        else:
            self.close("crashed", f"{type(exc).__name__}: {exc}"[:500])


def attach(model: torch.nn.Module, optimizer: torch.optim.Optimizer, *,
           monitor: Monitor | None = None, run: str | None = None,
           loss_module: torch.nn.Module | None = None, accelerator: Any = None,
           tensors: Mapping[str, str | torch.nn.Module] | None = None,
           feeds_exp: Collection[str] = (), watch: bool = True, updates: bool = True,
           scaler: Any = None, start_step: int = 0, **monitor_options: Any) -> Attachment:
    """Hook ``model`` and ``optimizer`` (and ``loss_module``) onto ``monitor`` or a new
    ``Monitor(run, **monitor_options)``.

    ``tensors``: statistics recorded on every training forward, by name — a key of the
    model's output mapping (``{"depth_raw": "z_raw"}``) or a module whose output is read;
    ``feeds_exp``: those of them that go into ``exp`` (headroom). ``watch`` / ``updates``
    switch ``Monitor.watch`` and ``Monitor.watch_optimizer`` on. ``accelerator``: an
    ``accelerate.Accelerator`` after ``prepare`` (its ``TrainvitalsTracker``'s monitor is
    used when none is given; its GradScaler is watched). ``scaler``: the mixed-precision
    ``torch.amp.GradScaler`` (``Monitor.watch_scaler``; a step it skips is recorded as a step,
    with ``amp/skipped`` = 1). ``start_step``: the number of the first optimizer step."""
    scaler = scaler if scaler is not None else getattr(optimizer, "scaler", None)  # Accelerate
    if accelerator is not None:  # hooks go on what ``prepare`` wrapped
        model = accelerator.unwrap_model(model)
        optimizer = getattr(optimizer, "optimizer", optimizer)
        scaler = scaler if scaler is not None else getattr(accelerator, "scaler", None)
        if monitor is None and run is None:
            monitor = _accelerate().tracker_monitor(accelerator)
    monitor, _ = own_monitor(monitor, run, monitor_options)
    recorder = StepRecorder(monitor, start_step=start_step)
    recorder.hook_step_start(model)
    removers = [w.remove for w in (monitor.watch(model) if watch else None,
                                   monitor.watch_optimizer(optimizer, model) if updates else None)
                if w is not None]
    if scaler is not None:
        removers.append(monitor.watch_scaler(scaler, after_update=recorder.scaler_updated).remove)
    recorder.hook_grads(model.parameters())
    recorder.hook_optimizer(optimizer)
    if loss_module is not None:
        recorder.hook_loss(loss_module)
    if tensors:
        recorder.hook_tensors(model, tensors, feeds_exp)
    handle = Attachment(monitor, recorder, removers)
    if accelerator is not None:
        handle.add_remover(_accelerate().bind(accelerator, monitor, recorder, handle.detach))
    return handle


def _accelerate() -> Any:
    """The Accelerate adapter, imported only when an accelerator is given."""
    return import_module("trainvitals.trainer_plugin.adapters.for_accelerate")


def own_monitor(monitor: Monitor | None, run: str | None,
                options: Mapping[str, Any]) -> tuple[Monitor, bool]:
    """The monitor to use, and whether the adapter made it (from ``run``) and so ends it."""
    if monitor is not None:
        if run is not None or options:
            raise TypeError("give either monitor= or run= (with Monitor options), not both")
        return monitor, False
    if run is None:
        raise TypeError("attach needs monitor= or run=")
    return Monitor(run, **options), True
