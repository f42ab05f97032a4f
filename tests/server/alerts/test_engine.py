"""The alert engine fed with Step sequences built from plain lists of floats."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import pytest

from trainvitals.protocol import ClipEvent, Step, TensorStats
from trainvitals.server.alerts import (
    Alert,
    AlertChange,
    AlertConfig,
    AlertEngine,
    Threshold,
)

NAN, INF = math.nan, math.inf


def make_steps(n: int, start: int = 1, run: str = "r", rank: int = 0, **columns: Any) -> list[Step]:
    """``n`` steps numbered from ``start``; each column is a per-step list or one repeated value."""
    steps = []
    for i in range(n):
        fields = {
            name: (col[i] if isinstance(col, Sequence) and not isinstance(col, str) else col)
            for name, col in columns.items()
        }
        steps.append(Step(run=run, session="s", seq=start + i, step=start + i, rank=rank, **fields))
    return steps


def zeroed(n: int, start: int, raw: float = 3.2e4, grad_norm: float | None = 0.0,
           **columns: Any) -> list[Step]:
    """``n`` steps whose loss guard zeroed a finite raw loss above clip 10: the silent stall.
    With ``grad_norm=None`` the signature is not exact (no gradient norm reported)."""
    event = ClipEvent(raw=raw, threshold=10.0, action="zeroed", reason="above_threshold")
    return make_steps(n, start, loss=raw, loss_used=0.0, grad_norm=grad_norm, clip=event,
                      **columns)


def healthy(n: int, start: int, **columns: Any) -> list[Step]:
    """``n`` ordinary steps: loss 1, gradients flowing."""
    return make_steps(n, start, loss=1.0, loss_used=1.0, grad_norm=0.5, **columns)


def feed(engine: AlertEngine, steps: list[Step]) -> list[AlertChange]:
    """Every change the engine emits over ``steps``, in order."""
    return [change for step in steps for change in engine.observe(step)]


def when(change: AlertChange) -> int | None:
    """The step a change happened at: the resolving step, else the step the condition held."""
    alert = change.alert
    return alert.resolved_step if change.kind == "resolved" else alert.last_step


def of(changes: list[AlertChange], kind: str, rule: str | None = None) -> list[Alert]:
    """The alerts of the changes of one kind (and rule)."""
    return [c.alert for c in changes if c.kind == kind and rule in (None, c.alert.rule)]


def test_nan_loss_opens_critical_on_that_exact_step() -> None:
    engine = AlertEngine()
    losses = [1.0, 0.9, 0.8, NAN, 0.7]
    changes = feed(engine, make_steps(5, start=100, loss=losses, loss_used=losses))
    opened = of(changes, "opened")
    assert [(a.rule, a.series, a.severity, a.opened_step) for a in opened] == [
        ("nonfinite", "loss", "critical", 103),
        ("nonfinite", "loss_used", "critical", 103),
    ]
    assert opened[0].first_step == 103
    assert opened[0].message == "Non-finite value at step 103: loss is NaN."
    assert math.isnan(float(opened[0].details["value"]))


def test_posinf_tensor_reports_counts() -> None:
    stats = TensorStats(count=65536, nan=12, posinf=3, neginf=0, min=-1.0, max=9.5, mean=0.25,
                        absmax=9.5, dtype="float16")
    changes = feed(AlertEngine(), healthy(1, start=1204, tensors={"depth": stats}))
    (alert,) = of(changes, "opened")
    assert (alert.rule, alert.series, alert.severity) == ("nonfinite", "tensor/depth", "critical")
    assert alert.details["posinf"] == 3 and alert.details["nan"] == 12
    assert alert.details["count"] == 65536
    assert alert.message == (
        "Non-finite tensor at step 1,204: depth (float16) has 12 NaN, 3 +Inf, 0 -Inf of 65,536 "
        "elements; finite min -1, max 9.5, mean 0.25."
    )


def test_neginf_component_opens_on_its_series() -> None:
    comps = [{"normal": 0.5}, {"normal": -INF}]
    (alert,) = of(feed(AlertEngine(), healthy(2, start=1, components=comps)), "opened")
    assert (alert.series, alert.opened_step, alert.details["value"]) == ("loss/normal", 2, -INF)
    assert alert.message == "Non-finite value at step 2: loss/normal is -Inf."


def test_the_exact_stall_signature_opens_at_its_first_step() -> None:
    engine = AlertEngine(AlertConfig(stall_steps=10))
    changes = feed(engine, healthy(3, start=1) + zeroed(2, start=4))
    (opened,) = of(changes, "opened", "stall")
    assert (opened.series, opened.first_step, opened.opened_step) == ("loss_used", 4, 4)
    assert opened.message == (
        "Silent stall: the backpropagated loss was 0 (clipped) at this step; raw loss 3.2e+04 "
        "> clip 10; pre-clip gradient norm 0. Gradients cannot flow."
    )
    # tiny but not exactly 0: ambiguous, so it takes stall_steps steps
    tiny = feed(AlertEngine(AlertConfig(stall_steps=10)), zeroed(9, start=1, grad_norm=1e-9))
    assert of(tiny, "opened", "stall") == []


def test_stall_opens_on_kth_step_counts_repeats_and_resolves_after_clean_steps() -> None:
    engine = AlertEngine(AlertConfig(stall_steps=10, resolve_after=5))
    steps = (healthy(3, start=1201) + zeroed(30, start=1204, grad_norm=None)
             + healthy(10, start=1234))
    changes = feed(engine, steps)
    (opened,) = of(changes, "opened", "stall")
    assert (opened.series, opened.severity) == ("loss_used", "critical")
    assert (opened.first_step, opened.opened_step, opened.count) == (1204, 1213, 1)
    assert opened.message == (
        "Silent stall: the backpropagated loss was 0 (clipped) for 10 consecutive steps since step "
        "1,204; raw loss 3.2e+04 > clip 10. Gradients cannot flow."
    )
    updated = of(changes, "updated", "stall")
    assert [a.last_step for a in updated] == list(range(1214, 1234))
    assert updated[-1].count == 21 and updated[-1].details["streak"] == 30
    (resolved,) = of(changes, "resolved", "stall")
    assert (resolved.resolved_step, resolved.count, resolved.first_step) == (1238, 21, 1204)
    assert engine.open_alerts() == []


def test_stall_needs_k_consecutive_steps_and_unreported_loss_breaks_the_streak() -> None:
    engine = AlertEngine(AlertConfig(stall_steps=10))
    gap = make_steps(1, start=10, loss=None, loss_used=None)  # nothing reported: proves nothing
    changes = feed(engine, zeroed(9, start=1, grad_norm=None) + gap
                   + zeroed(9, start=11, grad_norm=None))
    assert of(changes, "opened", "stall") == []
    changes = feed(engine, zeroed(1, start=20, grad_norm=None))
    assert [(a.opened_step, a.first_step) for a in of(changes, "opened", "stall")] == [(20, 11)]


def test_one_passing_step_inside_a_stall_does_not_resolve_it() -> None:
    engine = AlertEngine(AlertConfig(stall_steps=10, resolve_after=5))
    steps = (zeroed(10, start=1, grad_norm=None) + healthy(1, start=11)
             + zeroed(20, start=12, grad_norm=None))
    changes = feed(engine, steps)
    assert len(of(changes, "opened", "stall")) == 1
    assert of(changes, "resolved", "stall") == []
    (alert,) = [a for a in engine.open_alerts() if a.rule == "stall"]
    assert (alert.count, alert.last_step, alert.first_step) == (21, 31, 1)


def test_zero_grad_while_loss_positive_stalls_on_grad_norm() -> None:
    engine = AlertEngine(AlertConfig(stall_steps=5))
    changes = feed(engine, make_steps(8, start=1, loss=2.5, loss_used=2.5, grad_norm=0.0))
    assert [(a.rule, a.series, a.opened_step, a.first_step) for a in of(changes, "opened")] == [
        ("stall", "grad_norm", 1, 1)]  # exactly 0 with a positive loss: at once
    (alert,) = engine.open_alerts()
    assert alert.count == 8 and alert.details["loss"] == 2.5
    assert alert.message == (
        "Silent stall: the gradient norm before clipping was 0 for 8 consecutive steps since "
        "step 1 while the raw loss was 2.5 > 0. The loss does not reach any trainable parameter."
    )


def test_zeroed_loss_is_one_stall_not_also_a_grad_norm_stall() -> None:
    changes = feed(AlertEngine(AlertConfig(stall_steps=3)), zeroed(5, start=1))
    assert [a.series for a in of(changes, "opened", "stall")] == ["loss_used"]


def test_clip_warning_reports_count_and_rate_over_window() -> None:
    event = ClipEvent(raw=25.0, threshold=10.0, action="zeroed", reason="above_threshold")
    clips = [None, event, None, event, event, None, None, event]
    changes = feed(AlertEngine(AlertConfig(clip_window=4)), healthy(8, start=1, clip=clips))
    alerts = [c.alert for c in changes if c.alert.rule == "clip"]
    assert [(a.last_step, a.details["count"], a.details["window"]) for a in alerts] == [
        (2, 1, 2), (4, 2, 4), (5, 3, 4), (8, 2, 4),
    ]
    assert alerts[-1].details["rate"] == 0.5 and alerts[-1].count == 4
    assert (alerts[-1].details["raw"], alerts[-1].details["action"]) == (25.0, "zeroed")
    assert alerts[-1].message == (
        "Loss guard fired at step 8: raw loss 25 > clip 10, action zeroed. 2 of the last 4 steps "
        "were clipped (50%)."
    )


def test_nonfinite_clip_raw_is_a_nonfinite_loss() -> None:
    event = ClipEvent(raw=INF, threshold=10.0, action="passed", reason="posinf")
    (alert,) = of(feed(AlertEngine(), make_steps(1, start=7, clip=event)), "opened", "nonfinite")
    assert (alert.series, alert.details["value"]) == ("loss", INF)
    assert alert.message == (
        "Non-finite value at step 7: the loss guard saw a raw loss of +Inf (action passed)."
    )


def noise(n: int, seed: int = 0) -> list[float]:
    """Seeded normal noise around 1.0 with std 0.05."""
    rng = random.Random(seed)
    return [rng.gauss(1.0, 0.05) for _ in range(n)]


def test_noise_alone_never_spikes() -> None:
    losses = noise(200)
    steps = make_steps(200, start=1, loss=losses, loss_used=losses, grad_norm=0.5)
    changes = feed(AlertEngine(), steps)
    assert changes == []


def test_spike_opens_on_the_spike_step_and_does_not_poison_the_baseline() -> None:
    losses = noise(100)
    losses[60] = losses[61] = 3.0  # two spikes in a row: the first must not hide the second
    changes = feed(AlertEngine(), make_steps(100, start=1, loss=losses, grad_norm=0.5))
    assert [(c.kind, when(c)) for c in changes] == [
        ("opened", 61), ("updated", 62), ("resolved", 67)]
    alert = changes[0].alert
    assert (alert.rule, alert.series, alert.severity) == ("spike", "loss", "warning")
    assert alert.details["history"] == 50 and float(alert.details["z"]) > 10
    assert abs(float(alert.details["median"]) - 1.0) < 0.05


def test_threshold_fires_with_its_severity_and_resolves() -> None:
    config = AlertConfig(thresholds=(Threshold.parse("tensor/depth_raw/max>15:critical"),))
    engine = AlertEngine(config)
    maxima = [10.0, 16.0, 17.5, 12.0, 12.0, 12.0, 12.0, 12.0]
    tensors = [{"depth_raw": TensorStats(100, 0, 0, 0, -1.0, m, 0.0, m)} for m in maxima]
    changes = feed(engine, healthy(8, start=1, tensors=tensors))
    assert [(c.kind, when(c)) for c in changes] == [
        ("opened", 2), ("updated", 3), ("resolved", 8)]
    alert = changes[1].alert
    assert (alert.rule, alert.series, alert.severity) == (
        "threshold", "tensor/depth_raw/max", "critical")
    assert alert.details == {"value": 17.5, "op": ">", "limit": 15.0}
    assert alert.message == "Threshold crossed at step 3: tensor/depth_raw/max = 17.5 > 15."


def test_clean_steps_must_be_consecutive_to_resolve() -> None:
    engine = AlertEngine(AlertConfig(resolve_after=3, thresholds=(Threshold.parse("lr>1"),)))
    lrs = [2.0, 0.1, 0.1, 2.0, 0.1, 0.1, 2.0, 0.1, 0.1, 0.1]
    changes = feed(engine, healthy(10, start=1, lr=lrs))
    assert [(c.kind, when(c)) for c in changes] == [
        ("opened", 1), ("updated", 4), ("updated", 7), ("resolved", 10)]
    assert changes[-1].alert.count == 3


def test_steps_without_the_series_do_not_count_as_clean() -> None:
    engine = AlertEngine(AlertConfig(resolve_after=2, thresholds=(Threshold.parse("scalar/x>1"),)))
    scalars = [{"x": 5.0}, {}, {}, {}, {"x": 0.0}, {}, {"x": NAN}, {"x": 0.0}]
    changes = [c for c in feed(engine, healthy(8, start=1, scalars=scalars))
               if c.alert.rule == "threshold"]
    assert [(c.kind, c.alert.series) for c in changes] == [
        ("opened", "scalar/x"), ("resolved", "scalar/x")]
    assert changes[1].alert.resolved_step == 8


def test_most_severe_threshold_on_a_series_speaks() -> None:
    thresholds = (Threshold.parse("loss>2"), Threshold.parse("loss>5:critical"))
    engine = AlertEngine(AlertConfig(thresholds=thresholds))
    changes = feed(engine, make_steps(3, start=1, loss=[3.0, 6.0, 3.0]))
    assert [(c.kind, c.alert.severity) for c in changes] == [
        ("opened", "warning"), ("updated", "critical"), ("updated", "warning")]


def test_no_storm_a_thousand_stalled_steps_open_one_alert() -> None:
    engine = AlertEngine()
    changes = feed(engine, zeroed(1000, start=1))
    kinds = [(c.kind, c.alert.rule) for c in changes]
    assert kinds.count(("opened", "stall")) == 1
    assert len(of(changes, "opened")) == 2  # the stall, and the clip warning on step 1
    (stall,) = [a for a in engine.open_alerts() if a.rule == "stall"]
    assert (stall.count, stall.opened_step, stall.last_step) == (1000, 1, 1000)
    assert stall.details["streak"] == 1000


def test_load_open_continues_an_alert_after_restart() -> None:
    before = AlertEngine()
    feed(before, zeroed(12, start=1))
    saved = before.open_alerts(run="r")
    ghost = replace(saved[0], state="resolved", series="ghost", resolved_step=5)
    after = AlertEngine()
    after.load_open([*saved, ghost])
    changes = feed(after, zeroed(1, start=13))
    assert of(changes, "opened") == []
    stall = next(a for a in of(changes, "updated") if a.rule == "stall")
    assert (stall.opened_step, stall.first_step, stall.count, stall.last_step) == (1, 1, 13, 13)
    assert sorted(a.series for a in after.open_alerts()) == ["loss", "loss_used"]
    after.load_open(saved)  # the live alerts win over the stale copies
    assert [a.count for a in after.open_alerts() if a.rule == "stall"] == [13]


def test_ranks_and_runs_are_separate_and_forget_drops_a_run() -> None:
    engine = AlertEngine(AlertConfig(stall_steps=2))
    feed(engine, zeroed(2, start=1, rank=0) + zeroed(2, start=1, rank=1))
    feed(engine, zeroed(2, start=1, run="other"))
    assert [(a.run, a.rank) for a in engine.open_alerts(run="r") if a.rule == "stall"] == [
        ("r", 0), ("r", 1)]
    engine.forget("r")
    assert {a.run for a in engine.open_alerts()} == {"other"}
    assert engine.open_alerts(run="r") == []


@pytest.mark.parametrize("field", ["stall_steps", "resolve_after", "clip_window", "spike_window"])
def test_config_rejects_empty_windows(field: str) -> None:
    with pytest.raises(ValueError, match=field):
        AlertConfig(**{field: 0})  # type: ignore[arg-type]
