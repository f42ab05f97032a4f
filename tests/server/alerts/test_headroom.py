"""The ``headroom`` rule: margin to ``exp`` overflow by level (fractions of the dtype's margin)
and by trend (a steady rise projected to overflow within the horizon)."""

from __future__ import annotations

import math

import pytest

from trainvitals.protocol import Step, TensorStats
from trainvitals.server.alerts import AlertConfig, AlertEngine
from trainvitals.server.alerts.rules.headroom import headroom, slope

F32 = math.log(3.4028234663852886e38)  # 88.72
F16 = math.log(65504.0)  # 11.09


def stats(mx: float, limit: float = F32, dtype: str = "float32") -> TensorStats:
    return TensorStats(count=8, nan=0, posinf=0, neginf=0, min=mx - 1, max=mx, mean=mx - 0.5,
                       absmax=abs(mx), dtype=dtype, headroom=limit - mx)


def at(n: int, **tensors: TensorStats) -> Step:
    return Step(run="r", session="s", seq=n + 1, step=n, tensors=tensors)


def rising(start: float, rate: float, n: int = 10) -> list[tuple[int, float]]:
    return [(i, start + rate * i) for i in range(n)]


@pytest.mark.parametrize(("mx", "limit", "dtype", "severity"), [
    (40.0, F32, "float32", None),  # 48.7 left of 88.7: exp(40)² = 5.5e34 still fits
    (58.0, F32, "float32", "warning"),  # 30.7 left: under 50% (44.4): exp(58)² overflows
    (85.0, F32, "float32", "critical"),  # 3.7 left: under 5% (4.4)
    (0.0, F16, "float16", None),  # exp(0) = 1 in float16: fine, though only 11.1 is left
    (5.0, F16, "float16", None),  # exp(5)² = 22,026 fits float16's 65,504
    (6.0, F16, "float16", "warning"),  # exp(6)² = 162,755 does not: under 50% (5.55)
    (10.8, F16, "float16", "critical"),  # 0.29 left: under 5% (0.55)
])
def test_level_is_a_fraction_of_the_dtypes_margin(mx: float, limit: float, dtype: str,
                                                  severity: str | None) -> None:
    found = headroom(at(4, z=stats(mx, limit, dtype)), {}, AlertConfig())
    assert [f.severity for f in found] == ([] if severity is None else [severity])
    if severity is not None:
        (f,) = found
        assert (f.rule, f.series, f.first_step) == ("headroom", "tensor/z/headroom", 4)
        assert math.isclose(float(f.details["limit"]), limit)


def test_level_message() -> None:
    (f,) = headroom(at(1532, depth_raw=stats(85.0)), {}, AlertConfig())
    assert f.message == ("Overflow risk at step 1,532: depth_raw (float32) max 85 leaves 3.72 "
                         "before exp overflows at 88.7 (less than 5% of the margin).")


def test_nan_headroom_and_tensors_without_one_are_not_judged() -> None:
    no_finite = TensorStats(count=4, nan=4, posinf=0, neginf=0, min=math.nan, max=math.nan,
                            mean=math.nan, absmax=math.nan, dtype="float32", headroom=math.nan)
    plain = TensorStats(count=4, nan=0, posinf=0, neginf=0, min=0.0, max=1e30, mean=1.0,
                        absmax=1e30, dtype="float32")
    assert headroom(at(1, a=no_finite, b=plain), {"a": rising(0, 1)}, AlertConfig()) == []


def test_slope_is_least_squares() -> None:
    assert slope(rising(3.0, 0.25)) == pytest.approx(0.25)
    assert slope([(5, 1.0), (5, 2.0)]) == 0.0
    assert slope([(0, 0.0), (1, 2.0), (2, 1.0)]) == pytest.approx(0.5)


@pytest.mark.parametrize(("points", "fires"), [
    (rising(1.0, 0.1), True),  # 87.7 left at 0.1/step: ~880 steps, within 1000
    (rising(1.0, 0.01), False),  # ~8,800 steps away
    (rising(1.0, 0.1, n=9), False),  # the window is not full yet
    ([(i, 1.0 + 0.1 * i + (0.3 if i % 2 else 0.0)) for i in range(10)], False),  # zig-zag
    ([(i, 1.0) for i in range(9)] + [(9, 40.0)], False),  # one jump: the level rule's job
    ([(i, 1.0 + 0.1 * i) for i in range(9)] + [(9, 1.75)], True),  # one dip is tolerated
])
def test_trend_needs_a_steady_rise_that_reaches_overflow_within_the_horizon(
        points: list[tuple[int, float]], fires: bool) -> None:
    last, mx = points[-1]
    found = headroom(at(last, z=stats(mx)), {"z": points}, AlertConfig())
    assert [f.severity for f in found] == (["warning"] if fires else [])
    if fires:
        (f,) = found
        assert f.first_step == last  # when the trend became clear, not the window start
        assert float(f.details["steps_left"]) == pytest.approx(
            (F32 - mx) / slope(points))


def test_the_engine_opens_the_trend_alert_on_the_tenth_rising_step_and_resolves_it() -> None:
    engine = AlertEngine(AlertConfig(resolve_after=3))
    changes = []
    for n in range(25):
        mx = 1.0 + 0.1 * min(n, 14)  # rises for 15 steps, then stays
        changes += [(n, c.kind) for c in engine.observe(at(n, z=stats(mx)))]
    opened = [n for n, kind in changes if kind == "opened"]
    resolved = [n for n, kind in changes if kind == "resolved"]
    assert opened == [9]
    # Flat after step 14: the window still holds 8 rises at step 15, 7 at step 16; clean from
    # step 16, resolved on the third clean step.
    assert resolved == [18]


@pytest.mark.parametrize("bad", [
    {"headroom_warning": 0.05, "headroom_critical": 0.25},
    {"headroom_warning": 1.0},
    {"headroom_critical": -0.1},
    {"headroom_window": 2},
    {"headroom_horizon": 0},
    {"no_learning_ratio": -1.0},
    {"no_learning_ratio": math.nan},
])
def test_config_refuses_bad_values(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        AlertConfig(**bad)  # type: ignore[arg-type]


def test_settings_carry_the_headroom_limits_and_refuse_a_critical_above_the_warning() -> None:
    from pydantic import ValidationError

    from trainvitals.server import Settings

    assert Settings().headroom_warning == 0.5
    settings = Settings(headroom_warning=0.25, headroom_critical=0.1, headroom_horizon=50)
    assert (settings.headroom_warning, settings.headroom_critical,
            settings.headroom_horizon) == (0.25, 0.1, 50)
    with pytest.raises(ValidationError, match="must not exceed headroom_warning"):
        Settings(headroom_critical=0.6)
    with pytest.raises(ValidationError):
        Settings(headroom_warning=1.0)
