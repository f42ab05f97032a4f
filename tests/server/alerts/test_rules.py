"""The rules as pure functions over one step and plain lists of floats."""

from __future__ import annotations

import math

from trainvitals.protocol import ClipEvent, Step, TensorStats
from trainvitals.protocol.series import step_values
from trainvitals.server.alerts import AlertConfig, Threshold
from trainvitals.server.alerts.memory import Streak, grad_stalled, loss_stalled
from trainvitals.server.alerts.registry import observed
from trainvitals.server.alerts.rules.clip import clip
from trainvitals.server.alerts.rules.nonfinite import nonfinite
from trainvitals.server.alerts.rules.spike import baseline, spike
from trainvitals.server.alerts.rules.stall import stall
from trainvitals.server.alerts.rules.threshold import threshold


def at(n: int = 1, **fields: object) -> Step:
    """One step numbered ``n``."""
    return Step(run="r", session="s", seq=n, step=n, **fields)  # type: ignore[arg-type]


def streak(length: int, start: int = 1) -> Streak:
    """A streak that held on ``length`` steps from ``start``."""
    s = Streak()
    for n in range(start, start + length):
        s.update(True, n)
    return s


def test_baseline_is_median_and_scaled_mad() -> None:
    base = baseline([1.0, 2.0, 3.0, 4.0, 100.0])
    assert (base.median, base.mad, base.size) == (3.0, 1.0, 5)
    assert math.isclose(base.scale, 1.4826)
    assert math.isclose(base.z(3.0 + 2 * 1.4826), 2.0)


def test_baseline_with_zero_mad_falls_back_to_mean_deviation_then_to_a_floor() -> None:
    mostly_flat = [1.0] * 15 + [1.5] * 5
    assert math.isclose(baseline(mostly_flat).scale, 1.2533 * 0.125)
    assert math.isclose(baseline([2.0] * 20).scale, 0.02)  # 1% of the median
    assert baseline([0.0] * 20).scale == 1e-12


def test_spike_needs_history_a_rise_and_a_large_z() -> None:
    config = AlertConfig(spike_min_history=20, spike_threshold=10.0)
    history = [1.0 + 0.01 * (i % 5) for i in range(20)]  # median 1.02, MAD 0.01
    assert spike(at(loss=5.0), history[:19], config) == []  # too little history
    assert spike(at(loss=-50.0), history, config) == []  # far, but below the median
    assert spike(at(loss=1.1), history, config) == []  # z ≈ 5.4
    assert spike(at(loss=math.inf), history, config) == []  # nonfinite's job
    (finding,) = spike(at(7, loss=5.0), history, config)
    assert (finding.rule, finding.series, finding.first_step) == ("spike", "loss", 7)
    assert math.isclose(float(finding.details["z"]), (5.0 - 1.02) / 0.014826)
    assert finding.message == (
        "Loss spike at step 7: raw loss 5 is 268 robust deviations above the median 1.02 of the "
        "last 20 finite losses (spread 0.0148, threshold 10)."
    )


def test_a_flat_loss_spikes_only_on_a_real_jump() -> None:
    config = AlertConfig()
    assert spike(at(loss=1.05), [1.0] * 20, config) == []
    assert len(spike(at(loss=1.2), [1.0] * 20, config)) == 1


def test_stall_fires_from_kth_step_or_any_step_while_open() -> None:
    step = at(12, loss=3.2e4, loss_used=0.0)
    assert stall(step, streak(9), Streak(), 10) == []
    (finding,) = stall(step, streak(10, start=3), Streak(), 10)
    assert (finding.series, finding.first_step, finding.details["streak"]) == ("loss_used", 3, 10)
    assert finding.message.endswith("since step 3; raw loss 3.2e+04. Gradients cannot flow.")
    assert [f.series for f in stall(step, streak(1), streak(1), 10, {"grad_norm"})] == [
        "grad_norm"]


def test_stall_conditions() -> None:
    event = ClipEvent(raw=12.0, threshold=10.0, action="zeroed", reason="above_threshold")
    assert loss_stalled(at(loss_used=0.0)) and loss_stalled(at(clip=event))
    assert not loss_stalled(at()) and not loss_stalled(at(loss_used=math.nan))
    assert grad_stalled(at(loss=1.0, grad_norm=0.0))
    assert not grad_stalled(at(loss=0.0, grad_norm=0.0))  # a perfect fit has nothing to learn
    assert not grad_stalled(at(loss=math.nan, grad_norm=0.0))
    assert not grad_stalled(at(loss=12.0, loss_used=0.0, grad_norm=0.0))  # the zeroed-loss stall


def test_clip_details() -> None:
    event = ClipEvent(raw=math.nan, threshold=10.0, action="passed", reason="nan")
    assert clip(at(), 3, 10) == []
    (finding,) = clip(at(5, clip=event), 3, 10)
    assert finding.details["rate"] == 0.3 and finding.details["reason"] == "nan"
    assert finding.message == (
        "Loss guard fired at step 5: raw loss NaN (guard reason nan), action passed. "
        "3 of the last 10 steps were clipped (30%)."
    )


def test_nonfinite_tensor_stats_and_empty_tensors() -> None:
    empty = TensorStats(0, 0, 0, 0, math.nan, math.nan, math.nan, math.nan)
    overflowing_mean = TensorStats(4, 0, 0, 0, 1.0, 3e38, math.inf, 3e38)
    all_nan = TensorStats(4, 4, 0, 0, math.nan, math.nan, math.nan, math.nan)
    step = at(3, tensors={"empty": empty, "mean": overflowing_mean, "z": all_nan})
    found = nonfinite(step, step_values(step))
    assert [f.series for f in found] == ["tensor/mean", "tensor/z"]
    assert found[1].message == (
        "Non-finite tensor at step 3: z has 4 NaN, 0 +Inf, 0 -Inf of 4 elements; no finite element."
    )


def test_nonfinite_reports_the_loss_once() -> None:
    event = ClipEvent(raw=math.nan, threshold=10.0, action="passed", reason="nan")
    step = at(loss=math.nan, clip=event, lr=math.inf, scalars={"acc": math.nan})
    found = nonfinite(step, step_values(step))
    assert [(f.series, f.message) for f in found] == [
        ("loss", "Non-finite value at step 1: loss is NaN."),
        ("lr", "Non-finite value at step 1: lr is +Inf."),
        ("scalar/acc", "Non-finite value at step 1: scalar/acc is NaN."),
    ]


def test_threshold_skips_missing_and_nonfinite_values() -> None:
    limits = [Threshold.parse("scalar/x<0"), Threshold.parse("lr>1:critical")]
    step = at(2, lr=2.0, scalars={"x": math.nan})
    (finding,) = threshold(step, step_values(step), limits)
    assert (finding.series, finding.severity, finding.details["value"]) == ("lr", "critical", 2.0)


def test_observed_only_when_the_series_was_reported() -> None:
    step = at(loss=1.0, tensors={"z": TensorStats(1, 0, 0, 0, 0.0, 0.0, 0.0, 0.0)})
    values = step_values(step)
    assert observed("nonfinite", "tensor/z", step, values)
    assert not observed("nonfinite", "tensor/depth", step, values)
    assert observed("threshold", "tensor/z/max", step, values)
    assert not observed("threshold", "scalar/x", step, values)
    assert observed("spike", "loss", step, values) and not observed("nonfinite", "lr", step, values)
    assert observed("stall", "loss_used", step, values) and observed("clip", "loss", step, values)
