"""Tensor statistics computed on the tensor's own device, without a host sync.

``stats_vector`` launches a handful of reductions and returns a small float64 tensor on the
same device; nothing is read back here. ``unpack_stats`` turns the host copy of that vector
into a ``TensorStats`` later, on the sender thread.
"""

from __future__ import annotations

import math

import torch

from trainvitals.protocol import TensorStats

__all__ = ["STATS_WIDTH", "exp_overflow_log", "stats_vector", "unpack_stats"]

# nan, posinf, neginf, finite count, finite min, finite max, finite sum
STATS_WIDTH = 7


def stats_vector(t: torch.Tensor) -> torch.Tensor:
    """Seven float64 statistics of ``t`` as a device tensor; see ``unpack_stats`` for the order."""
    flat = t.detach().reshape(-1)
    if not (flat.is_floating_point() or flat.is_complex()):
        flat = flat.to(torch.float64)  # integers have no NaN; float64 holds them exactly enough
    # No torch.tensor(..., device=...) here: building a device tensor from host data is a
    # blocking host-to-device copy on CUDA, which waits for the whole stream. Python scalars
    # go to kernels as arguments instead.
    if flat.numel() == 0:
        empty = (0.0, 0.0, 0.0, 0.0, math.inf, -math.inf, 0.0)
        return torch.stack([torch.full((), v, dtype=torch.float64, device=flat.device)
                            for v in empty])
    finite = torch.isfinite(flat)
    parts = (
        torch.isnan(flat).sum(),
        torch.isposinf(flat).sum(),
        torch.isneginf(flat).sum(),
        finite.sum(),
        torch.where(finite, flat, math.inf).amin(),
        torch.where(finite, flat, -math.inf).amax(),
        torch.where(finite, flat, 0).sum(dtype=torch.float64),
    )
    return torch.stack([p.to(torch.float64) for p in parts])


def exp_overflow_log(dtype: torch.dtype) -> float | None:
    """ln of the dtype's largest value: where ``exp`` overflows (≈88.72 float32, ≈11.09 float16)."""
    if not dtype.is_floating_point:
        return None
    return math.log(torch.finfo(dtype).max)


def unpack_stats(
    values: list[float], *, count: int, dtype: torch.dtype, feeds_exp: bool = False
) -> TensorStats:
    """A ``TensorStats`` from the host copy of ``stats_vector``'s output."""
    nan, posinf, neginf, finite, fmin, fmax, fsum = values
    if finite == 0:
        fmin = fmax = mean = absmax = math.nan  # no finite element: say so, don't invent 0
    else:
        mean = fsum / finite
        absmax = max(abs(fmin), abs(fmax))
    headroom = None
    limit = exp_overflow_log(dtype) if feeds_exp else None
    if limit is not None:
        headroom = limit - fmax if finite else math.nan
    return TensorStats(
        count=count, nan=int(nan), posinf=int(posinf), neginf=int(neginf),
        min=fmin, max=fmax, mean=mean, absmax=absmax,
        dtype=str(dtype).removeprefix("torch."), headroom=headroom,
    )
