"""Non-finite floats on a wire that is plain JSON.

Plain JSON has no NaN or Infinity, and browsers' ``JSON.parse`` rejects the bare tokens
Python's ``json`` would write. So a number field holding a non-finite value carries one of
three strings instead: ``"NaN"``, ``"Infinity"``, ``"-Infinity"`` — exactly what JavaScript's
``Number(s)`` and Python's ``float(s)`` turn back into the same value.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["NON_FINITE_STRINGS", "float_from_wire", "float_to_wire"]

NON_FINITE_STRINGS = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def float_to_wire(value: float) -> float | str:
    """A float as JSON can carry it: itself when finite, else its string name."""
    if math.isfinite(value):
        return value
    if math.isnan(value):
        return "NaN"
    return "Infinity" if value > 0 else "-Infinity"


def float_from_wire(value: Any) -> float:
    """The float a wire value stands for; raises ``TypeError`` for anything else.

    Like ``JSON.parse`` and ``float("1e400")``, an integer beyond the float range reads as
    ±Infinity (``float(10**400)`` alone would raise ``OverflowError``).
    """
    if isinstance(value, bool):  # bool is an int subclass; True is not a number here
        raise TypeError("expected a number, got a boolean")
    if isinstance(value, int):
        try:
            return float(value)
        except OverflowError:
            return math.inf if value > 0 else -math.inf
    if isinstance(value, float):
        return float(value)
    if isinstance(value, str) and value in NON_FINITE_STRINGS:
        return NON_FINITE_STRINGS[value]
    shown = repr(value)
    if len(shown) > 60:  # the message goes back to the peer in an error frame; keep it short
        shown = shown[:57] + "..."
    raise TypeError(f"expected a number or one of 'NaN', 'Infinity', '-Infinity', got {shown}")
