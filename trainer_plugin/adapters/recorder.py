"""One optimizer step's values, gathered from hooks, and the record that ends the step.

Every adapter drives a ``StepRecorder``. Hooks and wrapped framework calls hand it the raw
loss (a forward hook on the loss module), the loss actually backpropagated, gradient norms and
extra scalars; the framework's "the optimizer stepped" signal marks the step done; the record
itself is sent when the next step begins (the model's next forward, the framework's next
batch) or at ``flush()``, so values logged right after ``optimizer.step()`` still join their
own step. Nothing here reads a device value: norms and sums stay 0-d device tensors until the
Monitor's one transfer per step.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from typing import Any

import torch
from torch.utils.hooks import RemovableHandle

from trainvitals.protocol.series import BACKWARD_FACTOR
from trainvitals.trainer_plugin.adapters.values import (
    Mean,
    Number,
    grad_norm,
    item_of,
    loss_of,
    total_norm,
)
from trainvitals.trainer_plugin.monitor import Monitor
from trainvitals.trainer_plugin.values.clip import OnNonFinite

__all__ = ["StepRecorder"]


class StepRecorder:
    """Collects one step's values and ends it on ``monitor`` with ``log_step``.

    Steps are numbered from ``start_step`` (the first optimizer step) unless the framework
    says otherwise in ``step_done``. Call ``remove()`` to flush and take every hook off.
    """

    def __init__(self, monitor: Monitor, *, start_step: int = 0) -> None:
        self.monitor = monitor
        self.next_step = start_step
        self._handles: list[RemovableHandle] = []
        self._latest_grad: dict[int, torch.Tensor] = {}  # parameter index -> norm of its grad
        self._done: int | None = None  # a finished step whose record waits for the next one
        self._begun = False  # the current step has run a training forward or seen a loss
        self._reset()

    def _reset(self) -> None:
        self._raw, self._used, self._factor = Mean(), Mean(), Mean()
        self._grad_norm: Number | None = None
        self._grad_norm_post: Number | None = None
        self._lr: Number | None = None
        self._scalars: dict[str, Number] = {}

    # ------------------------------------------------------------------ values

    def raw_loss(self, value: Number) -> None:
        """The loss before any trainer-side guard (mean over the step's micro-batches)."""
        self._raw.add(value)
        if isinstance(value, torch.Tensor):
            self.monitor._micro.loss(value)  # which micro-batch went bad, if one does
        self._begun = True

    def used_loss(self, value: Number) -> None:
        """The loss that was backpropagated (mean over the step's micro-batches)."""
        self._used.add(value)
        self._begun = True

    def set_grad_norm(self, value: Number, *, post: bool = False) -> None:
        """The total gradient norm before clipping (``post=True``: the one applied)."""
        if post:
            self._grad_norm_post = value
        else:
            self._grad_norm = value

    def add_scalars(self, values: Mapping[str, Any]) -> None:
        """Extra scalars for this step; strings, booleans and non-scalars are left out."""
        for name, value in values.items():
            if isinstance(value, torch.Tensor) and value.numel() == 1:
                self._scalars[name] = value.detach()
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                self._scalars[name] = value

    def clip_guard(self, loss: torch.Tensor, threshold: float,
                   components: Mapping[str, Number] | None = None, *,
                   on_nonfinite: OnNonFinite = "pass") -> torch.Tensor:
        """``Monitor.clip_guard``: ``loss * 0.0`` above ``threshold``, and a clip event."""
        self._begun = True
        return self.monitor.clip_guard(loss, threshold, components, on_nonfinite=on_nonfinite)

    # ------------------------------------------------------------------ hooks

    def hook_loss(self, module: torch.nn.Module) -> None:
        """Read the raw loss from every training-mode call of ``module`` (see ``loss_of``)."""
        self._handles.append(module.register_forward_hook(self._on_loss_output))

    def hook_step_start(self, model: torch.nn.Module) -> None:
        """Send a finished step's record when ``model``'s next forward begins. Prepended, so
        the record is sealed before any watch hook records the new step."""
        self._handles.append(model.register_forward_pre_hook(self._on_forward, prepend=True))

    def hook_tensors(self, model: torch.nn.Module, tensors: Mapping[str, str | torch.nn.Module],
                     feeds_exp: Collection[str] = ()) -> None:
        """Record ``Monitor.tensor`` statistics on every training forward, without a call in
        the loop: ``name -> key`` reads ``model``'s output mapping (or attribute) ``key``;
        ``name -> module`` reads that module's output. ``feeds_exp``: names fed to ``exp``."""
        keys = {n: k for n, k in tensors.items() if isinstance(k, str)}
        if keys:
            self._handles.append(model.register_forward_hook(
                lambda module, args, output: self._record(keys, output, feeds_exp)))
        for name, where in tensors.items():
            if isinstance(where, torch.nn.Module):
                self._handles.append(where.register_forward_hook(
                    lambda module, args, output, n=name: self._record({n: None}, output,
                                                                      feeds_exp)))

    def hook_grads(self, params: Iterable[torch.Tensor]) -> None:
        """Pre-clip gradient norm without the framework's help: the norm of each gradient as
        backward leaves it (accumulated, before clipping and, under DDP, before the all-reduce;
        under a ``GradScaler`` still scaled)."""
        for index, param in enumerate(p for p in params if p.requires_grad):
            self._handles.append(param.register_post_accumulate_grad_hook(  # type: ignore[no-untyped-call]
                lambda p, i=index: self._on_grad(i, p)))

    def hook_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """Mark a step done after each ``optimizer.step()`` that ran."""
        self._handles.append(optimizer.register_step_post_hook(
            lambda opt, args, kwargs: self.step_done(optimizer=opt)))

    def _on_forward(self, module: torch.nn.Module, args: Any) -> None:
        self.flush()
        if torch.is_grad_enabled():  # a training forward: the step is under way
            self._begun = True

    def _record(self, keys: Mapping[str, str | None], output: Any,
                feeds_exp: Collection[str]) -> None:
        if not torch.is_grad_enabled():
            return
        for name, key in keys.items():
            found = output if key is None else item_of(output, key)
            if isinstance(found, (tuple, list)) and found:
                found = found[0]
            if isinstance(found, torch.Tensor) and found.is_floating_point():
                self.monitor.tensor(name, found, feeds_exp=name in feeds_exp)

    def _on_loss_output(self, module: torch.nn.Module, args: Any, output: Any) -> None:
        loss = loss_of(output)
        if loss is not None and torch.is_grad_enabled():  # validation runs without grad
            self.raw_loss(loss)
            if loss.requires_grad:
                loss.register_hook(self._on_loss_grad)  # type: ignore[no-untyped-call]

    def _on_loss_grad(self, grad: torch.Tensor) -> None:
        """The gradient backward brings to the raw loss: d(loss used)/d(raw loss). It is 1 for
        a plain ``loss.backward()``, 1/k for a loss divided over k micro-batches, the scale
        under a GradScaler — and exactly 0 when a guard did ``loss = loss * 0.0``, which is how
        ``attach`` alone sees such a guard without a line in the loop."""
        if grad.numel() == 1:
            self._factor.add(grad.detach().reshape(()))

    def _on_grad(self, index: int, param: torch.Tensor) -> None:
        if param.grad is not None and param.grad.layout == torch.strided:
            self._latest_grad[index] = torch.linalg.vector_norm(param.grad.detach())

    # ------------------------------------------------------------------ step boundaries

    def step_done(self, step: int | None = None,
                  optimizer: torch.optim.Optimizer | None = None) -> None:
        """The optimizer stepped: step ``step`` (default: the next number) is complete.

        Its gradient norms are taken now (before the next backward changes them); its record
        waits for the next step to begin, or ``flush()``.
        """
        self.flush()
        self._done = self.next_step if step is None else step
        self._begun = False
        self.next_step = self._done + 1
        if self._grad_norm is None and self._latest_grad:
            self._grad_norm = total_norm(list(self._latest_grad.values()))
        self._latest_grad = {}
        if optimizer is not None:
            if self._grad_norm_post is None:
                self._grad_norm_post = grad_norm(
                    p for g in optimizer.param_groups for p in g["params"])
            lr = optimizer.param_groups[0].get("lr")
            if isinstance(lr, (torch.Tensor, float, int)) and not isinstance(lr, bool):
                self._lr = lr

    def scaler_updated(self) -> None:
        """A GradScaler's ``update()`` ran: the optimizer step is over. When the scaler skipped
        it (Inf/NaN gradients) no optimizer hook fired, so the step ends here; it is numbered
        like any other, as the frameworks count it."""
        if self._done is None and self._begun:
            self.step_done()

    def flush(self) -> None:
        """Send the finished step's record, if one is waiting."""
        if self._done is None:
            return
        step, self._done = self._done, None
        factor = self._factor.value()
        if factor is not None:
            self._scalars.setdefault(BACKWARD_FACTOR, factor)
        self.monitor.log_step(
            step, loss=self._raw.value(), loss_used=self._used.value(),
            grad_norm=self._grad_norm, grad_norm_post=self._grad_norm_post, lr=self._lr,
            scalars=self._scalars or None)
        self._reset()

    def remove(self) -> None:
        """Flush, then take every hook off. A step that began but never reached the optimizer
        (a trainer that aborts on a NaN loss) is sent too: its loss was seen."""
        self.flush()
        if self._begun:
            self.step_done()
            self.flush()
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
