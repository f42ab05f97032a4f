"""Tensor statistics: counts of non-finite elements, finite extremes, exp headroom per dtype;
the CPU shortcut gives exactly what the device path gives."""

from __future__ import annotations

import math
import struct
from typing import Any

import pytest
import torch
from torch.overrides import TorchFunctionMode

from trainvitals.protocol import TensorStats
from trainvitals.trainer_plugin import exp_overflow_log
from trainvitals.trainer_plugin.values.stats import (
    STATS_WIDTH,
    host_stats,
    stats_vector,
    tensor_stats,
    unpack_stats,
)

NAN, INF = math.nan, math.inf
LN_F32_MAX = 88.72283905206835  # ln(3.4028234663852886e38)
LN_F16_MAX = 11.089866488461016  # ln(65504)


def stats(t: torch.Tensor, feeds_exp: bool = False) -> TensorStats:
    vector = stats_vector(t)
    assert vector.dtype == torch.float64 and vector.shape == (STATS_WIDTH,)
    assert vector.device == t.device and not vector.requires_grad
    return unpack_stats(vector.tolist(), count=t.numel(), dtype=t.dtype, feeds_exp=feeds_exp)


def extremes(s: TensorStats) -> tuple[float, float, float, float]:
    return (s.min, s.max, s.mean, s.absmax)


def all_nan(values: tuple[float, ...]) -> bool:
    return all(math.isnan(v) for v in values)


def test_mixed_finite_and_nonfinite() -> None:
    t = torch.tensor([[1.0, NAN, INF], [-INF, -2.0, 3.0]], requires_grad=True)
    s = stats(t)
    assert (s.count, s.nan, s.posinf, s.neginf, s.nonfinite) == (6, 1, 1, 1, 3)
    assert (s.min, s.max, s.absmax) == (-2.0, 3.0, 3.0)
    assert s.mean == pytest.approx(2.0 / 3.0)
    assert (s.dtype, s.headroom) == ("float32", None)


def test_absmax_is_taken_from_the_more_negative_side() -> None:
    s = stats(torch.tensor([-7.5, 2.0, NAN]))
    assert (s.min, s.max, s.absmax) == (-7.5, 2.0, 7.5)


def test_all_nonfinite_has_no_invented_extremes() -> None:
    s = stats(torch.tensor([NAN, INF, -INF, NAN]), feeds_exp=True)
    assert (s.count, s.nan, s.posinf, s.neginf) == (4, 2, 1, 1)
    assert all_nan(extremes(s))
    assert s.headroom is not None and math.isnan(s.headroom)


def test_empty_tensor() -> None:
    s = stats(torch.empty(0, 3), feeds_exp=True)
    assert (s.count, s.nan, s.posinf, s.neginf) == (0, 0, 0, 0)
    assert all_nan(extremes(s))
    assert s.headroom is not None and math.isnan(s.headroom)


@pytest.mark.parametrize(("dtype", "name"), [(torch.int64, "int64"), (torch.int8, "int8"),
                                             (torch.uint8, "uint8")])
def test_integer_tensors_have_no_headroom(dtype: torch.dtype, name: str) -> None:
    s = stats(torch.tensor([1, 5, 3], dtype=dtype), feeds_exp=True)
    assert (s.count, s.nan, s.posinf, s.neginf) == (3, 0, 0, 0)
    assert extremes(s) == (1.0, 5.0, 3.0, 5.0)
    assert (s.dtype, s.headroom) == (name, None)


def test_negative_integers_and_bools() -> None:
    s = stats(torch.tensor([-5, 1, 1]))
    assert (s.min, s.max, s.absmax) == (-5.0, 1.0, 5.0)
    assert s.mean == pytest.approx(-1.0)
    b = stats(torch.tensor([True, False, True, True]))
    assert (b.dtype, b.min, b.max, b.mean) == ("bool", 0.0, 1.0, 0.75)


@pytest.mark.parametrize(("dtype", "ln_max"), [
    (torch.float32, LN_F32_MAX),
    (torch.float16, LN_F16_MAX),
    (torch.bfloat16, math.log(torch.finfo(torch.bfloat16).max)),
    (torch.float64, math.log(torch.finfo(torch.float64).max)),
])
def test_headroom_for_tensors_that_feed_exp(dtype: torch.dtype, ln_max: float) -> None:
    t = torch.tensor([0.5, 4.0, -3.0], dtype=dtype)
    s = stats(t, feeds_exp=True)
    assert exp_overflow_log(dtype) == pytest.approx(ln_max, abs=1e-9)
    assert s.headroom == pytest.approx(ln_max - 4.0, abs=1e-9)
    assert extremes(s) == (-3.0, 4.0, 0.5, 4.0)
    assert stats(t).headroom is None  # only when asked


def test_float_headroom_constants() -> None:
    assert exp_overflow_log(torch.float32) == pytest.approx(88.7228, abs=1e-4)
    assert exp_overflow_log(torch.float16) == pytest.approx(11.0899, abs=1e-4)
    assert exp_overflow_log(torch.bfloat16) == pytest.approx(88.7189, abs=1e-4)  # max 3.39e38
    assert exp_overflow_log(torch.int32) is None


def test_float16_overflowed_values_and_negative_headroom() -> None:
    t = torch.tensor([60000.0, 70000.0, 1.0], dtype=torch.float16)  # 70000 overflows to +Inf
    s = stats(t, feeds_exp=True)
    assert (s.posinf, s.max, s.min) == (1, 60000.0, 1.0)
    assert s.headroom == pytest.approx(LN_F16_MAX - 60000.0)
    assert s.headroom is not None and s.headroom < 0


def test_float16_mean_is_summed_in_float64() -> None:
    # 4096 halves of 1.0 plus 1.0: a float16 running sum would stop at 2048.
    t = torch.ones(4097, dtype=torch.float16)
    assert stats(t).mean == 1.0


def test_bfloat16_extremes_and_counts() -> None:
    t = torch.tensor([1.0, -2.0, NAN, INF, 3.0e38], dtype=torch.bfloat16)
    s = stats(t)
    assert (s.nan, s.posinf, s.neginf, s.dtype) == (1, 1, 0, "bfloat16")
    assert s.min == -2.0
    assert s.max == pytest.approx(3.0e38, rel=1e-2)


# ---------------------------------------------------------------- the CPU shortcut (host_stats)

def _bits(values: list[float]) -> list[bytes]:
    return [struct.pack("<d", v) for v in values]  # exact: tells -0.0 from 0.0, NaN from NaN


def _cases() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(7)
    big = torch.randn(300_001, generator=gen) * 1e3  # past the parallel-reduction grain size
    mixed = torch.randn(1000, generator=gen)
    mixed[[3, 500]], mixed[7], mixed[9] = NAN, INF, -INF
    strided = torch.randn(64, 48, generator=gen).t()[::2]  # a non-contiguous view
    return {
        "all finite": torch.randn(8192, generator=gen),
        "4-d": torch.randn(8, 32, 32, 3, generator=gen) * 7,
        "large 4-d": torch.randn(16, 16, 32, 32, generator=gen) * 1e3,
        "nan": torch.tensor([1.0, NAN, -3.0]),
        "+inf": torch.tensor([1.0, INF, -3.0]),
        "-inf": torch.tensor([1.0, -INF, -3.0]),
        "mixed": mixed,
        "only non-finite": torch.tensor([NAN, INF, -INF]),
        "empty": torch.empty(0, 4),
        "0-d": torch.tensor(-2.5),
        "int64": torch.tensor([[-5, 7], [2**40, 3]]),
        "uint8": torch.tensor([0, 255, 3], dtype=torch.uint8),
        "bool": torch.tensor([True, False, True]),
        "bfloat16": (torch.randn(5000, generator=gen) * 50).bfloat16(),
        "bfloat16 with nan": torch.tensor([1.0, NAN, 3.0e38], dtype=torch.bfloat16),
        "float16": (torch.randn(5000, generator=gen) * 100).half(),
        "float16 overflowed": torch.tensor([60000.0, 70000.0, -1.0], dtype=torch.float16),
        "float64": torch.randn(4097, generator=gen, dtype=torch.float64),
        "float64 sum overflows": torch.tensor([1.7e308, 1.7e308, -1.0], dtype=torch.float64),
        "large": big,
        "large with inf": torch.cat([big, torch.tensor([INF])]),
        "non-contiguous": strided,
        "signed zeros": torch.tensor([0.0, -0.0, 0.0]),
        "requires grad": torch.randn(10, generator=gen, requires_grad=True) * 2,
    }


@pytest.mark.parametrize("case", list(_cases()))
def test_the_cpu_shortcut_gives_exactly_the_masked_passes_results(case: str) -> None:
    t = _cases()[case]
    assert _bits(host_stats(t)) == _bits(stats_vector(t).tolist())


def test_the_cpu_shortcut_reads_few_values_and_masks_only_non_finite_tensors() -> None:
    counter = _OpCounter()
    with counter:
        host_stats(torch.randn(100))
    finite_ops = counter.ops
    with counter:
        host_stats(torch.tensor([1.0, NAN]))
    assert "isnan" not in finite_ops and "where" not in finite_ops
    assert "isnan" in counter.ops and "where" in counter.ops


def test_tensor_stats_chooses_by_device() -> None:
    t = torch.tensor([1.0, INF])
    assert tensor_stats(t) == host_stats(t)  # the CPU: floats, read at once
    meta = tensor_stats(torch.empty(3, device="meta"))  # a device that is never read
    assert isinstance(meta, torch.Tensor) and meta.device.type == "meta"
    assert meta.shape == (STATS_WIDTH,)


class _OpCounter(TorchFunctionMode):
    def __enter__(self) -> _OpCounter:
        self.ops: list[str] = []
        return super().__enter__()  # type: ignore[no-any-return]

    def __torch_function__(self, func: Any, types: Any, args: Any = (),
                           kwargs: Any = None) -> Any:
        self.ops.append(getattr(func, "__name__", str(func)))
        return func(*args, **(kwargs or {}))
