"""How numbers read in alert messages: steps with thousands separators, values to 3 digits."""

from __future__ import annotations

import math

__all__ = ["count", "percent", "step", "value"]


def value(x: float) -> str:
    """A float to 3 significant digits, or ``NaN``, ``+Inf``, ``-Inf``."""
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "+Inf" if x > 0 else "-Inf"
    return f"{x:.3g}"


def step(n: int) -> str:
    """A step number with thousands separators: ``1,204``."""
    return f"{n:,}"


def count(n: int) -> str:
    """An element or step count with thousands separators."""
    return f"{n:,}"


def percent(rate: float) -> str:
    """A rate in [0, 1] as a whole percentage, never rounding a nonzero rate to 0%."""
    if 0 < rate < 0.01:
        return "<1%"
    return f"{rate:.0%}"
