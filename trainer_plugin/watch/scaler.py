"""``Monitor.watch_scaler``: what a mixed-precision ``GradScaler`` did at each step.

A GradScaler multiplies the loss by a scale before backward, and skips the optimizer step when
the scaled gradients came out Inf/NaN — by design, while it searches for a scale that fits
(and it halves the scale). Such a step is data, not a failure: the server's rules read these
scalars and do not call its non-finite gradients an incident. What is one: skipping that
persists, or a scale that collapses (see ``server/alerts/rules/amp.py``).

Scalars sent with the step (``protocol.series``): ``amp/skipped`` (1 when ``scaler.step``
skipped the optimizer's step, else 0) and ``amp/scale`` (the scale after ``scaler.update()``).
Read from the scaler's own device tensors when ``update()`` runs, so nothing is read on the
host (``get_scale()`` would sync).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from trainvitals.protocol import series

__all__ = ["ScalerWatch"]

Number = torch.Tensor | float | int


class ScalerWatch:
    """Wraps ``scaler.update``; ``remove()`` puts it back."""

    def __init__(self, scaler: Any, scalar: Callable[[str, Number], None],
                 after_update: Callable[[], None] | None = None) -> None:
        if not hasattr(scaler, "update") or not hasattr(scaler, "_per_optimizer_states"):
            raise TypeError(f"expected a torch.amp.GradScaler, got {type(scaler).__name__}")
        self.scaler, self._scalar, self._after = scaler, scalar, after_update
        self._update = scaler.update
        scaler.update = self._on_update

    def remove(self) -> None:
        """Stop watching: the scaler's own ``update`` again."""
        if self.scaler.update == self._on_update:
            self.scaler.update = self._update

    def _on_update(self, *args: Any, **kwargs: Any) -> Any:
        if not self.scaler.is_enabled():
            return self._update(*args, **kwargs)
        found = self._found_inf()  # read before update() resets the optimizer states
        result = self._update(*args, **kwargs)
        if found is not None:
            self._scalar(series.AMP_SKIPPED, found)
        scale = getattr(self.scaler, "_scale", None)
        if isinstance(scale, torch.Tensor):
            self._scalar(series.AMP_SCALE, scale.detach().reshape(()).clone())
        if self._after is not None:
            self._after()
        return result

    def _found_inf(self) -> torch.Tensor | None:
        """1.0 when any optimizer's step was skipped for Inf/NaN gradients (device tensors)."""
        flags: list[torch.Tensor] = []
        for state in self.scaler._per_optimizer_states.values():
            found = state.get("found_inf_per_device") or {}
            flags += [f.detach().reshape(()).to(torch.float32) for f in found.values()]
        if not flags:
            return None
        devices = {f.device for f in flags}
        device = flags[0].device
        if len(devices) > 1:
            flags = [f.to(device, non_blocking=True) for f in flags]
        return (torch.stack(flags).sum() > 0).to(torch.float32)
