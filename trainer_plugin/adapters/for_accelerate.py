"""HF Accelerate: attach to an Accelerator after ``prepare``, and a tracker for ``log_with``.

    accelerator = Accelerator(log_with=[TrainvitalsTracker(run="pi3")])
    accelerator.init_trackers("pi3", config=cfg)             # the run starts with cfg
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    trainvitals.attach(model, optimizer, loss_module=criterion, accelerator=accelerator)
    ...                                                      # the loop stays as it was
    accelerator.end_training()                               # last record, then run end

The accelerator *instance*'s ``backward`` and ``clip_grad_norm_`` are wrapped (the class is
left alone): the loss ``backward`` receives is the loss used, the value ``clip_grad_norm_``
returns the pre-clip norm. Everything else is ``attach`` on the unwrapped optimizer, whose
hooks fire only on real steps (not on accumulation micro-steps, not on skipped fp16 steps).
Every rank reports (``main_process_only = False``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import accelerate  # type: ignore[import-untyped]
import torch
from accelerate.tracking import GeneralTracker  # type: ignore[import-untyped]

from trainvitals.trainer_plugin.adapters.plain import own_monitor
from trainvitals.trainer_plugin.adapters.recorder import StepRecorder
from trainvitals.trainer_plugin.adapters.values import plain_config
from trainvitals.trainer_plugin.monitor import Monitor

__all__ = ["TrainvitalsTracker", "bind", "tracker_monitor", "wrap_accelerator"]


class TrainvitalsTracker(GeneralTracker):  # type: ignore[misc]
    """An Accelerate tracker: ``log`` sends scalars, ``log_images`` records tensor images'
    statistics (others are accepted and ignored). Give ``monitor`` or ``run`` (the Monitor
    is then made at ``init_trackers``, with its config). Once ``attach`` binds it, values join
    the step records; alone, each ``log`` call is a step of its own."""

    name = "trainvitals"
    requires_logging_directory = False
    main_process_only = False

    def __init__(self, monitor: Monitor | None = None, *, run: str | None = None,
                 **monitor_options: Any) -> None:
        super().__init__()
        if monitor is None and run is None:
            raise TypeError("TrainvitalsTracker needs monitor= or run=")
        self._monitor, self._run, self._options = monitor, run, monitor_options
        self._owned = monitor is None
        self._alone: StepRecorder | None = None  # steps of its own while no attach binds it
        self.bound: tuple[StepRecorder, Callable[[], None]] | None = None  # set by attach

    @property
    def tracker(self) -> Monitor:
        """The Monitor (made now if ``init_trackers`` did not make it)."""
        if self._monitor is None:
            self._monitor, _ = own_monitor(None, self._run, self._options)
        return self._monitor

    def uses(self, monitor: Monitor) -> bool:
        """Whether this tracker reports to ``monitor`` (never makes one)."""
        return self._monitor is monitor

    def store_init_configuration(self, values: dict[str, Any]) -> None:
        if self._monitor is None:  # the config belongs in the run's start record
            self._monitor, _ = own_monitor(None, self._run,
                                           {**self._options, "config": plain_config(values)})

    def log(self, values: Mapping[str, Any], step: int | None = None, **kwargs: Any) -> None:
        if self.bound is not None:
            self.bound[0].add_scalars(values)
            return
        if self._alone is None:
            self._alone = StepRecorder(self.tracker)
        self._alone.add_scalars(values)
        self._alone.step_done(step)
        self._alone.flush()

    def log_images(self, values: Mapping[str, Any], step: int | None = None,
                   **kwargs: Any) -> None:
        for name, image in values.items():
            if isinstance(image, torch.Tensor) and image.is_floating_point():
                self.tracker.tensor(f"image/{name}", image.detach())

    def finish(self) -> None:
        """``accelerator.end_training()``: send the last step; end the run if it made it."""
        if self.bound is not None:
            self.bound[1]()  # the attachment's detach: its last record goes out first
        if self._owned and self._monitor is not None:
            self._monitor.close()


def tracker_monitor(accelerator: accelerate.Accelerator) -> Monitor | None:
    """The monitor of the accelerator's ``TrainvitalsTracker``, if it has one."""
    trackers = _trackers(accelerator)
    return trackers[0].tracker if trackers else None


def bind(accelerator: accelerate.Accelerator, monitor: Monitor, recorder: StepRecorder,
         detach: Callable[[], None]) -> Callable[[], None]:
    """Wrap ``backward`` / ``clip_grad_norm_`` and route the trackers of ``monitor`` into
    ``recorder`` (``detach``: what their ``finish`` calls); returns the undoing."""
    trackers = [t for t in _trackers(accelerator) if t.uses(monitor)]
    for tracker in trackers:
        tracker.bound = (recorder, detach)
    unwrap = wrap_accelerator(accelerator, recorder)

    def unbind() -> None:
        unwrap()
        for tracker in trackers:
            if tracker.bound is not None and tracker.bound[0] is recorder:
                tracker.bound = None

    return unbind


def _trackers(accelerator: accelerate.Accelerator) -> list[TrainvitalsTracker]:
    return [t for t in [*accelerator.trackers, *accelerator.log_with]
            if isinstance(t, TrainvitalsTracker)]


def wrap_accelerator(accelerator: accelerate.Accelerator,
                     recorder: StepRecorder) -> Callable[[], None]:
    """Wrap the instance's ``backward`` and ``clip_grad_norm_``; returns the unwrapping."""
    backward, clip = accelerator.backward, accelerator.clip_grad_norm_

    def wrapped_backward(loss: torch.Tensor, **kwargs: Any) -> Any:
        recorder.used_loss(loss)
        return backward(loss, **kwargs)

    def wrapped_clip(parameters: Any, max_norm: float, norm_type: float = 2) -> Any:
        total = clip(parameters, max_norm, norm_type)
        if isinstance(total, (torch.Tensor, float)):  # None under some DeepSpeed setups
            recorder.set_grad_norm(total)
        return total

    accelerator.backward, accelerator.clip_grad_norm_ = wrapped_backward, wrapped_clip

    def unwrap() -> None:
        for name, ours in (("backward", wrapped_backward), ("clip_grad_norm_", wrapped_clip)):
            if accelerator.__dict__.get(name) is ours:
                del accelerator.__dict__[name]  # the class method shows through again

    return unwrap
