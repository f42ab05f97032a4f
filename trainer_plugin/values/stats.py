"""Tensor statistics: seven numbers per tensor, taken without stalling the device.

``tensor_stats`` picks the way by device (``trainvitals.trainer_plugin.values.devices``):

* ``stats_vector`` (CUDA and other asynchronous devices) launches a handful of masked
  reductions and returns a small float64 tensor on the same device; nothing is read back here.
* ``host_stats`` (CPU, where reading a value stalls nothing) reads one float64 sum first: it is
  finite exactly when every element is (a float32/float16/bfloat16 sum cannot overflow
  float64), and then one ``aminmax`` gives the rest — two passes instead of eight. Only a
  tensor with a NaN/±Inf (or a float64 tensor whose sum overflows) takes the masked passes.
  Both give identical numbers.

``unpack_stats`` turns the host copy of the seven values into a ``TensorStats`` later, on the
sender thread.
"""

from __future__ import annotations

import math

import torch

from trainvitals.protocol import TensorStats
from trainvitals.trainer_plugin.values.devices import reads_now

__all__ = ["STATS_WIDTH", "exp_overflow_log", "host_stats", "stats_vector", "tensor_stats",
           "unpack_stats"]

# nan, posinf, neginf, finite count, finite min, finite max, finite sum
STATS_WIDTH = 7
_EMPTY = (0.0, 0.0, 0.0, 0.0, math.inf, -math.inf, 0.0)


def tensor_stats(t: torch.Tensor) -> torch.Tensor | list[float]:
    """The seven statistics of ``t``: floats at once where reading is free, else on the device."""
    return host_stats(t) if reads_now(t) else stats_vector(t)


def host_stats(t: torch.Tensor) -> list[float]:
    """``stats_vector(t).tolist()``, read on the host with fewer passes (CPU tensors only)."""
    flat = t.detach() if t.requires_grad else t
    if not flat.is_floating_point() or not flat.is_contiguous():
        # What stats_vector reduces: a float64 copy of integers, a contiguous copy of a
        # strided view (the same summation order, so the same sum to the last bit).
        flat = _flat(flat)
    if flat.numel() == 0:
        return list(_EMPTY)
    if not flat.is_complex():
        total = flat.sum(dtype=torch.float64).item()
        if math.isfinite(total):  # every element is finite: nothing to mask
            low, high = flat.aminmax()
            return [0.0, 0.0, 0.0, float(flat.numel()), float(low), float(high), total]
    return [float(v) for v in stats_vector(flat).tolist()]


def stats_vector(t: torch.Tensor) -> torch.Tensor:
    """Seven float64 statistics of ``t`` as a device tensor; see ``unpack_stats`` for the order."""
    flat = _flat(t)
    # No torch.tensor(..., device=...) here: building a device tensor from host data is a
    # blocking host-to-device copy on CUDA, which waits for the whole stream. Python scalars
    # go to kernels as arguments instead.
    if flat.numel() == 0:
        return torch.stack([torch.full((), v, dtype=torch.float64, device=flat.device)
                            for v in _EMPTY])
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


def _flat(t: torch.Tensor) -> torch.Tensor:
    flat = t.detach().reshape(-1)
    if not (flat.is_floating_point() or flat.is_complex()):
        flat = flat.to(torch.float64)  # integers have no NaN; float64 holds them exactly enough
    return flat


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
