"""Values read out of framework objects for a step record, all kept on the device.

The loss in a loss module's or model's output, gradient norms, a mean over micro-batches,
and a framework's hyperparameters reduced to what a run config can hold.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch

__all__ = ["Mean", "Number", "grad_norm", "item_of", "loss_of", "plain_config", "total_norm"]

Number = torch.Tensor | float | int


class Mean:
    """The mean of what one step saw (several micro-batches under gradient accumulation)."""

    def __init__(self) -> None:
        self.total: Number | None = None
        self.count = 0

    def add(self, value: Number) -> None:
        value = value.detach() if isinstance(value, torch.Tensor) else float(value)
        self.total = value if self.total is None else self.total + value
        self.count += 1

    def value(self) -> Number | None:
        if self.total is None or self.count == 1:
            return self.total
        return self.total / self.count


def loss_of(output: Any) -> torch.Tensor | None:
    """The loss in a loss module's (or model's) output: a floating tensor (its mean when not a
    scalar), the first item of a tuple or list, or a mapping's ``"loss"`` (HF outputs)."""
    if isinstance(output, Mapping):
        output = output.get("loss")
    elif isinstance(output, (tuple, list)) and output:
        output = output[0]
    if not isinstance(output, torch.Tensor) or not output.is_floating_point():
        return None
    return output if output.numel() == 1 else output.detach().mean()


def item_of(output: Any, key: str) -> Any:
    """``output[key]`` of a mapping (HF outputs are ones), else the attribute ``key``."""
    if isinstance(output, Mapping):
        return output.get(key)
    return getattr(output, key, None)


def grad_norm(params: Iterable[torch.Tensor]) -> torch.Tensor | None:
    """The total 2-norm of the parameters' gradients, on the device (one ``_foreach_norm``)."""
    grads = [p.grad.detach() for p in params
             if p.grad is not None and p.grad.layout == torch.strided]
    return total_norm(list(torch._foreach_norm(grads))) if grads else None


def total_norm(norms: list[torch.Tensor]) -> torch.Tensor:
    """The 2-norm of per-tensor 2-norms (one stack, one reduction; no host sync)."""
    device = norms[0].device
    if any(n.device != device for n in norms):  # a model split over devices
        norms = [n.to(device, non_blocking=True) for n in norms]
    total: torch.Tensor = torch.linalg.vector_norm(torch.stack(norms))
    return total


def plain_config(values: Mapping[str, Any]) -> dict[str, Any]:
    """A framework's hyperparameters as a run config: the plain values (numbers, strings,
    booleans, None) only, so that the start record always encodes."""
    return {str(k): v for k, v in values.items()
            if v is None or isinstance(v, (str, int, float, bool))}
