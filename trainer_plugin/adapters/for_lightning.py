"""PyTorch Lightning: a ``Callback`` that reports every optimizer step of ``trainer.fit``.

    vitals = LightningCallback(run="pi3", loss_module="criterion")
    Trainer(callbacks=[vitals], gradient_clip_val=1.0).fit(module, loader)

Hook points, all documented Lightning callbacks: ``on_before_backward`` gives the loss used,
``on_before_optimizer_step`` runs before Lightning clips (the pre-clip norm, computed on the
device), ``on_train_batch_end`` after a real optimizer step ends the step (the applied norm,
the learning rate); the record goes out at the next ``on_train_batch_start`` or at the end.
The raw loss comes from a forward hook on ``loss_module`` (the LightningModule's attribute of
that name, or a module). Clip events need the guard in ``training_step``:
``loss = vitals.clip_guard(loss, 10.0)`` instead of ``if loss > 10: loss = loss * 0.0``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import lightning.pytorch as pl
import torch

from trainvitals.trainer_plugin.adapters.plain import own_monitor
from trainvitals.trainer_plugin.adapters.recorder import StepRecorder
from trainvitals.trainer_plugin.adapters.values import Number, grad_norm, plain_config
from trainvitals.trainer_plugin.monitor import Monitor
from trainvitals.trainer_plugin.values.clip import OnNonFinite

__all__ = ["LightningCallback"]


class LightningCallback(pl.Callback):
    """Reports to ``monitor``, or to a ``Monitor(run, **monitor_options)`` made at the start of
    training (with the trainer's rank) and closed at its end."""

    def __init__(self, monitor: Monitor | None = None, *, run: str | None = None,
                 loss_module: str | torch.nn.Module | None = None, watch: bool = True,
                 updates: bool = True, **monitor_options: Any) -> None:
        if monitor is None and run is None:
            raise TypeError("LightningCallback needs monitor= or run=")
        self.monitor, self._run, self._options = monitor, run, monitor_options
        self._owned = monitor is None
        self._loss_module, self._watch, self._updates = loss_module, watch, updates
        self._recorder: StepRecorder | None = None
        self._removers: list[Callable[[], None]] = []
        self._steps_seen = 0

    def clip_guard(self, loss: torch.Tensor, threshold: float,
                   components: Mapping[str, Number] | None = None, *,
                   on_nonfinite: OnNonFinite = "pass") -> torch.Tensor:
        """``Monitor.clip_guard``, for ``training_step``."""
        if self.monitor is None:
            raise RuntimeError("clip_guard is available once training has started")
        return self.monitor.clip_guard(loss, threshold, components, on_nonfinite=on_nonfinite)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.monitor is None:
            self.monitor, _ = own_monitor(None, self._run, {
                "rank": trainer.global_rank, "world_size": trainer.world_size,
                "config": plain_config(pl_module.hparams), **self._options})
        self._recorder = StepRecorder(self.monitor, start_step=trainer.global_step)
        self._steps_seen = trainer.global_step
        if self._watch:
            self._removers.append(self.monitor.watch(pl_module).remove)
        if self._updates and trainer.optimizers:
            self._removers.append(
                self.monitor.watch_optimizer(trainer.optimizers[0], pl_module).remove)
        scaler = getattr(trainer.precision_plugin, "scaler", None)  # precision="16-mixed"
        if scaler is not None:  # its skipped steps are data; Lightning counts them as steps
            self._removers.append(self.monitor.watch_scaler(scaler).remove)
        loss_module = (getattr(pl_module, self._loss_module)
                       if isinstance(self._loss_module, str) else self._loss_module)
        if loss_module is not None:
            self._recorder.hook_loss(loss_module)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                             batch: Any, batch_idx: int) -> None:
        if self._recorder is not None:
            self._recorder.flush()

    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           loss: torch.Tensor) -> None:
        if self._recorder is not None:
            self._recorder.used_loss(loss)

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                                 optimizer: torch.optim.Optimizer) -> None:
        total = grad_norm(pl_module.parameters())  # Lightning clips after this hook
        if self._recorder is not None and total is not None:
            self._recorder.set_grad_norm(total)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           outputs: Any, batch: Any, batch_idx: int) -> None:
        if self._recorder is None or trainer.global_step == self._steps_seen:
            return  # an accumulation micro-batch, or a skipped step
        self._steps_seen = trainer.global_step
        self._recorder.step_done(trainer.global_step - 1, optimizer=trainer.optimizers[0])

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._finish("finished", "")

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                     exception: BaseException) -> None:
        self._finish("crashed", f"{type(exception).__name__}: {exception}"[:500])

    def _finish(self, status: str, reason: str) -> None:
        if self._recorder is not None:
            self._recorder.remove()
            self._recorder = None
        for remove in self._removers:
            remove()
        self._removers.clear()
        if self._owned and self.monitor is not None:
            self.monitor.close(status=status, reason=reason)
