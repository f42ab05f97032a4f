"""``Monitor.watch_optimizer``: how far each top-level module moved, and which are frozen or dead.

Optimizer step hooks, on the device, no sync:

* before ``optimizer.step()``: the trainable parameters are copied (``_foreach_mul(params, 1)``:
  memory for one copy of them, held only during the step; ``every=k`` measures every k-th step
  only);
* after it: max |grad| of every trainable parameter in one ``_foreach_norm`` — a parameter whose
  gradient is missing or exactly 0 everywhere is *dead* (counted per module) — and ‖Δθ‖/‖θ‖ per
  module from ``_foreach_sub`` and ``_foreach_norm``. Gradients are read *after* the step because
  Lightning (and any ``optimizer.step(closure)`` caller) runs forward and backward inside the
  step: before it, the gradients are still the previous step's.

Scalars sent with the step, per top-level module ``m`` (children of the model; parameters
registered on the model itself count as ``(root)``; without a model, per parameter group
``group<i>``): ``update/m`` (not sent when ``m`` has nothing trainable), ``dead_grads/m``,
``trainable/m`` and ``frozen/m`` (parameter tensors with ``requires_grad=False``, which are
intended and never dead), ``not_optimised/m`` (trainable tensors that no optimizer parameter
group holds; sent only when there are any); and ``lr/group<i>`` for every parameter group.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.hooks import RemovableHandle

from trainvitals.protocol import series
from trainvitals.trainer_plugin.values.devices import local

__all__ = ["ROOT_GROUP", "UpdateWatch"]

Number = torch.Tensor | float | int
ROOT_GROUP = "(root)"
TINY = 1e-30  # ‖θ‖ = 0 (a zero-initialised module) gives a huge ratio, not a division by zero


@dataclass
class _Group:
    name: str
    trainable: list[int]  # indices into the watch's flat parameter list
    frozen: int
    not_optimised: int = 0  # trainable tensors that no optimizer parameter group holds


class UpdateWatch:
    """Step hooks on ``optimizer``; ``remove()`` takes them off."""

    def __init__(self, optimizer: torch.optim.Optimizer, model: torch.nn.Module | None,
                 scalar: Callable[[str, Number], None], *, every: int = 1) -> None:
        if every < 1:
            raise ValueError(f"every must be at least 1, got {every}")
        self.optimizer, self.every, self._scalar = optimizer, every, scalar
        self._params: list[torch.Tensor] = []
        optimised = {id(p) for group in optimizer.param_groups for p in group["params"]}
        self._groups = [self._group(name, params, optimised) for name, params in _named_groups(
            optimizer, model)]
        self._sharded = any(local(p) is not p for p in self._params)  # FSDP2 DTensors
        self._steps = 0
        self._measuring = False
        self._snapshot: list[torch.Tensor] | None = None
        self._handles: list[RemovableHandle] = [
            optimizer.register_step_pre_hook(self._before),
            optimizer.register_step_post_hook(self._after),
        ]

    def remove(self) -> None:
        """Take both hooks off."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _group(self, name: str, params: list[torch.Tensor], optimised: set[int]) -> _Group:
        trainable = [p for p in params if p.requires_grad]
        first = len(self._params)
        self._params += trainable
        # Known once, when the watch starts: a sub-module built after the optimizer, or left
        # out of its parameter groups, gets gradients and never moves.
        orphans = sum(id(p) not in optimised for p in trainable)
        return _Group(name, list(range(first, len(self._params))), len(params) - len(trainable),
                      orphans)

    def _before(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        self._steps += 1
        self._snapshot = None
        self._measuring = (self._steps - 1) % self.every == 0
        if self._measuring and self._params:
            with torch.no_grad():
                self._snapshot = list(torch._foreach_mul(self._locals(), 1.0))

    def _locals(self) -> list[torch.Tensor]:
        """The parameters as this process holds them: FSDP2's shards (``devices.local``)."""
        return [local(p) for p in self._params] if self._sharded else self._params

    def _stage_dead(self) -> None:
        grads = {i: local(p.grad) for i, p in enumerate(self._params) if p.grad is not None}
        empty = {i for i, g in grads.items() if g.numel() == 0}  # a shard this rank lacks
        held = {i: g for i, g in grads.items() if i not in empty}
        norms = dict(zip(held, torch._foreach_norm(list(held.values()), ord=float("inf")),
                         strict=True)) if held else {}
        for group in self._groups:
            self._scalar(f"{series.TRAINABLE}{group.name}", len(group.trainable))
            self._scalar(f"{series.FROZEN}{group.name}", group.frozen)
            if group.not_optimised:
                self._scalar(f"{series.NOT_OPTIMISED}{group.name}", group.not_optimised)
            zero = [norms[i] == 0 for i in group.trainable if i in norms]
            # no gradient reached them at all (an empty shard of one did: it is not dead)
            missing = len(group.trainable) - len(zero) - len(empty & set(group.trainable))
            self._scalar(f"{series.DEAD_GRADS}{group.name}",
                         _stack(zero).sum() + missing if zero else missing)

    def _after(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        snapshot, self._snapshot = self._snapshot, None
        if not self._measuring:
            return
        self._measuring = False
        self._stage_dead()
        if snapshot is not None:
            self._stage_updates(snapshot)
        self._stage_lrs()

    def _stage_updates(self, snapshot: list[torch.Tensor]) -> None:
        with torch.no_grad():
            params = self._locals()
            moved = torch._foreach_norm(torch._foreach_sub(params, snapshot))
            sizes = torch._foreach_norm(params)
            for group in self._groups:
                held = [i for i in group.trainable if not self._sharded or params[i].numel()]
                if held:  # FSDP2: a module none of whose shards this rank holds says nothing
                    delta = torch.linalg.vector_norm(_stack([moved[i] for i in held]))
                    size = torch.linalg.vector_norm(_stack([sizes[i] for i in held]))
                    self._scalar(f"{series.UPDATE}{group.name}", delta / size.clamp_min(TINY))

    def _stage_lrs(self) -> None:
        for i, param_group in enumerate(self.optimizer.param_groups):
            lr = param_group.get("lr")
            if isinstance(lr, (torch.Tensor, float, int)) and not isinstance(lr, bool):
                self._scalar(f"{series.LR_GROUP}{i}", lr)


def _named_groups(optimizer: torch.optim.Optimizer,
                  model: torch.nn.Module | None) -> list[tuple[str, list[torch.Tensor]]]:
    if model is None:
        return [(f"group{i}", list(g["params"])) for i, g in enumerate(optimizer.param_groups)]
    # A DistributedDataParallel / DataParallel wrapper has one child, ``module``: name the
    # model's own top-level modules instead (``depth_head``, not ``module``).
    while isinstance(model, (torch.nn.parallel.DistributedDataParallel,
                             torch.nn.DataParallel)):
        model = model.module
    groups: list[tuple[str, list[torch.Tensor]]] = [
        (name, list(child.parameters())) for name, child in model.named_children()]
    own: list[torch.Tensor] = list(model.parameters(recurse=False))
    return ([(ROOT_GROUP, own)] if own else []) + [(n, ps) for n, ps in groups if ps]


def _stack(values: list[torch.Tensor]) -> torch.Tensor:
    device = values[0].device
    if any(v.device != device for v in values):  # a module split over devices (rare)
        values = [v.to(device, non_blocking=True) for v in values]
    return torch.stack(values)
