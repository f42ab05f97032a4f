"""``Monitor.denominator``: the values a loss divides by, and how many valid pixels it averaged.

A π³-style loss normalises by a mean distance over valid pixels; a sample without a valid
pixel makes that 0 (or ε), and the next division makes Inf or NaN. The helper reduces what it
is given on the device and sends, as scalars of the step, for a name ``n``:

* ``normalisation/n/denominator_min``: the smallest |denominator| (NaN if one is NaN);
* ``normalisation/n/eps``: the ε below which a denominator counts as degenerate;
* with ``valid_count``: ``normalisation/n/valid_min`` (fewest valid pixels of a sample) and
  ``normalisation/n/valid_zero`` (samples without any).

The server's ``normalisation`` rule alerts on them.
"""

from __future__ import annotations

import math

import torch

from trainvitals.protocol.series import NORMALISATION

__all__ = ["denominator_scalars"]

Number = torch.Tensor | float | int


def denominator_scalars(name: str, value: Number, valid_count: Number | None,
                        eps: float) -> dict[str, Number]:
    """The scalars to stage for one ``Monitor.denominator`` call (device reductions, no sync)."""
    if not (isinstance(eps, (int, float)) and math.isfinite(eps) and eps >= 0):
        raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
    prefix = f"{NORMALISATION}{name}"
    out: dict[str, Number] = {f"{prefix}/denominator_min": _smallest(value, abs_value=True),
                              f"{prefix}/eps": float(eps)}
    if valid_count is not None:
        out[f"{prefix}/valid_min"] = _smallest(valid_count, abs_value=False)
        out[f"{prefix}/valid_zero"] = (valid_count.detach().reshape(-1) == 0).sum() \
            if isinstance(valid_count, torch.Tensor) else float(valid_count == 0)
    return out


def _smallest(value: Number, *, abs_value: bool) -> Number:
    if isinstance(value, bool) or not isinstance(value, (torch.Tensor, int, float)):
        raise TypeError(f"expected a tensor or a number, got {type(value).__name__}")
    if not isinstance(value, torch.Tensor):
        return abs(float(value)) if abs_value else float(value)
    if value.numel() == 0:  # numel is known on the host: no sync
        raise ValueError("expected at least one value, got an empty tensor")
    flat = value.detach().reshape(-1)
    return (flat.abs() if abs_value else flat).amin()  # amin propagates NaN
