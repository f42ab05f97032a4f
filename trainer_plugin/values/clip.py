"""A loss guard that behaves like ``if loss > clip: loss = loss * 0.0`` and says when it fired.

The comparison stays on the device (``torch.where``), so guarding costs no host sync — unlike
the ``if`` it replaces. Non-finite losses are handled explicitly: ``NaN > clip`` is False, so
the original guard lets NaN through; ``inf * 0.0`` is NaN, so it turns +Inf into NaN.

On the CPU, where reading the loss stalls nothing (``trainvitals.trainer_plugin.values.devices``),
the guard is the original ``if`` itself: one read instead of three ops and two autograd nodes.
Only a non-finite loss under ``"zero"`` or ``"raise"`` takes the device path there.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Literal

import torch

from trainvitals.protocol import ClipEvent
from trainvitals.protocol.messages import ClipReason
from trainvitals.trainer_plugin.values.devices import reads_now

__all__ = ["NonFiniteLossError", "OnNonFinite", "guard_loss", "resolve_clip"]

OnNonFinite = Literal["pass", "zero", "raise"]


class NonFiniteLossError(FloatingPointError):
    """Raised by ``clip_guard(..., on_nonfinite="raise")`` when the raw loss is NaN or ±Inf."""


@dataclass(frozen=True)
class GuardSpec:
    """What one guard call was asked to do, kept on the host until its values arrive."""

    threshold: float
    on_nonfinite: OnNonFinite


def guard_loss(raw: torch.Tensor, threshold: float, on_nonfinite: OnNonFinite) -> torch.Tensor:
    """The loss to backpropagate: ``raw * 0.0`` above ``threshold``, else ``raw`` (on device)."""
    if (reads_now(raw) and raw.numel() == 1 and raw.is_floating_point()
            and isinstance(threshold, (int, float))):
        value = raw.item()
        if on_nonfinite == "pass" or math.isfinite(value):  # the original guard, exactly:
            over_host = value > _rounded(threshold, raw.dtype)  # torch compares in raw's dtype
            return raw * 0.0 if over_host else raw
    over = raw > threshold
    used = torch.where(over, raw * 0.0, raw)
    if on_nonfinite == "zero":
        used = torch.where(torch.isfinite(raw), used, torch.zeros_like(raw))
    elif on_nonfinite == "raise" and not bool(torch.isfinite(raw).all()):
        # A host sync, by the caller's choice: raising needs the value now.
        raise NonFiniteLossError(f"loss is not finite: {raw.detach().cpu().tolist()}")
    return used


@functools.lru_cache(maxsize=64)
def _rounded(threshold: float, dtype: torch.dtype) -> float:
    """``threshold`` as ``loss > threshold`` sees it: rounded to the loss's dtype."""
    return float(torch.tensor(threshold, dtype=dtype).item())


def resolve_clip(
    raw: float, spec: GuardSpec, components: dict[str, float]
) -> ClipEvent | None:
    """The clip event the guard produced for this raw loss, or ``None`` if it did not fire."""
    reason = _reason(raw, spec.threshold)
    if reason is None:
        return None
    if spec.on_nonfinite == "zero":
        action = "zeroed"
    elif spec.on_nonfinite == "raise" and not math.isfinite(raw):
        action = "raised"
    else:
        action = "zeroed" if raw > spec.threshold else "passed"  # NaN and -Inf pass, as before
    return ClipEvent(raw=raw, threshold=spec.threshold, action=action,  # type: ignore[arg-type]
                     reason=reason, components=components)


def _reason(raw: float, threshold: float) -> ClipReason | None:
    if math.isnan(raw):
        return "nan"
    if math.isinf(raw):
        return "posinf" if raw > 0 else "neginf"
    return "above_threshold" if raw > threshold else None
