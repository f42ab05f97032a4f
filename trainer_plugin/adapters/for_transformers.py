"""HF Transformers: a ``TrainerCallback``, and ``attach_trainer`` for the loss used too.

    vitals = attach_trainer(trainer, run="gpt-tiny")   # or Trainer(callbacks=[vitals])
    trainer.train()

The callback alone (``callbacks=[TransformersCallback(run=...)]``) reports per optimizer step
the raw loss (a forward hook on the model's output ``loss``, or on ``loss_module``), the
pre-clip gradient norm (gradient hooks), the norm after the Trainer's clipping
(``on_pre_optimizer_step``), the learning rate and the Trainer's own logs as ``hf/<key>``
scalars — next to the raw values, they show what the Trainer's log hides (its
``logging_nan_inf_filter`` replaces a NaN loss by an average). ``attach_trainer`` also wraps
``trainer.accelerator``: the loss ``backward`` receives (the loss used) and the pre-clip
norm ``clip_grad_norm_`` returns. A guard in ``compute_loss_func`` or ``compute_loss`` —
``vitals.clip_guard(loss, 10.0)`` — adds clip events.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import transformers

from trainvitals.trainer_plugin.adapters.for_accelerate import wrap_accelerator
from trainvitals.trainer_plugin.adapters.plain import own_monitor
from trainvitals.trainer_plugin.adapters.recorder import StepRecorder
from trainvitals.trainer_plugin.adapters.values import Number, grad_norm, plain_config
from trainvitals.trainer_plugin.monitor import Monitor
from trainvitals.trainer_plugin.values.clip import OnNonFinite

__all__ = ["TransformersCallback", "attach_trainer"]


class TransformersCallback(transformers.TrainerCallback):
    """Reports to ``monitor``, or to a ``Monitor(run, **monitor_options)`` made when training
    begins (with the Trainer's rank and arguments) and closed when it ends."""

    def __init__(self, monitor: Monitor | None = None, *, run: str | None = None,
                 loss_module: torch.nn.Module | None = None, watch: bool = True,
                 updates: bool = True, **monitor_options: Any) -> None:
        if monitor is None and run is None:
            raise TypeError("TransformersCallback needs monitor= or run=")
        self.monitor, self._run, self._options = monitor, run, monitor_options
        self._owned = monitor is None
        self._loss_module, self._watch, self._updates = loss_module, watch, updates
        self.accelerator: Any = None  # set by attach_trainer: its calls are wrapped too
        self._recorder: StepRecorder | None = None
        self._optimizer: torch.optim.Optimizer | None = None
        self._removers: list[Callable[[], None]] = []

    def clip_guard(self, loss: torch.Tensor, threshold: float,
                   components: Mapping[str, Number] | None = None, *,
                   on_nonfinite: OnNonFinite = "pass") -> torch.Tensor:
        """``Monitor.clip_guard``, for ``compute_loss_func`` or ``compute_loss``."""
        if self.monitor is None:
            raise RuntimeError("clip_guard is available once training has begun")
        return self.monitor.clip_guard(loss, threshold, components, on_nonfinite=on_nonfinite)

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        model: torch.nn.Module = kwargs["model"]
        if self.monitor is None:
            self.monitor, _ = own_monitor(None, self._run, {
                "rank": args.process_index, "world_size": args.world_size,
                "config": plain_config(args.to_dict()), **self._options})
        optimizer = kwargs.get("optimizer")
        self._optimizer = getattr(optimizer, "optimizer", optimizer)  # Accelerate wraps it
        scaler = getattr(optimizer, "scaler", None)  # fp16=True: Accelerate's GradScaler
        self._recorder = recorder = StepRecorder(self.monitor, start_step=state.global_step)
        if self._watch:
            self._removers.append(self.monitor.watch(model).remove)
        if self._updates and self._optimizer is not None:
            self._removers.append(self.monitor.watch_optimizer(self._optimizer, model).remove)
        if scaler is not None:  # skipped steps are data; the Trainer counts them as steps
            self._removers.append(self.monitor.watch_scaler(scaler).remove)
        recorder.hook_grads(model.parameters())
        recorder.hook_loss(model if self._loss_module is None else self._loss_module)
        if self.accelerator is not None:
            self._removers.append(wrap_accelerator(self.accelerator, recorder))

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self._recorder is not None:
            self._recorder.flush()

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        total = grad_norm(kwargs["model"].parameters())  # the Trainer has clipped by now
        if self._recorder is not None and total is not None:
            self._recorder.set_grad_norm(total, post=True)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self._recorder is not None:
            self._recorder.step_done(state.global_step - 1, optimizer=self._optimizer)

    def on_log(self, args: Any, state: Any, control: Any, logs: Mapping[str, Any] | None = None,
               **kwargs: Any) -> None:
        if self._recorder is not None and logs:
            self._recorder.add_scalars({f"hf/{key}": value for key, value in logs.items()})

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self._recorder is not None:
            self._recorder.remove()
            self._recorder = None
        for remove in self._removers:
            remove()
        self._removers.clear()
        if self._owned and self.monitor is not None:
            self.monitor.close()


def attach_trainer(trainer: transformers.Trainer, monitor: Monitor | None = None, *,
                   run: str | None = None, **options: Any) -> TransformersCallback:
    """Add a ``TransformersCallback`` to ``trainer`` that also wraps ``trainer.accelerator``."""
    callback = TransformersCallback(monitor, run=run, **options)
    callback.accelerator = trainer.accelerator
    trainer.add_callback(callback)
    return callback
