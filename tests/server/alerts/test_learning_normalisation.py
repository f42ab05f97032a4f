"""The ``no_learning`` and ``normalisation`` rules, alone and through the engine."""

from __future__ import annotations

import math
from collections.abc import Callable

from trainvitals.protocol import Step
from trainvitals.protocol.series import step_values
from trainvitals.server.alerts import AlertConfig, AlertEngine
from trainvitals.server.alerts.rules.no_learning import learned
from trainvitals.server.alerts.rules.normalisation import normalisation


def at(n: int, **scalars: float) -> Step:
    return Step(run="r", session="s", seq=n + 1, step=n,
                scalars={k.replace("__", "/"): v for k, v in scalars.items()})


def values(**scalars: float) -> dict[str, float]:
    return step_values(at(0, **scalars))


def test_learned_when_any_module_moves_and_any_gradient_lives() -> None:
    assert learned(values(update__a=1e-3, update__b=0.0), 1e-8) == (True, "")
    ok, why = learned(values(update__a=1e-9, update__b=0.0), 1e-8)
    assert not ok and why == ("every module's relative update ‖Δθ‖/‖θ‖ was at most 1e-08 "
                              "(largest 1e-09, a)")
    assert learned(values(update__a=math.nan), 1e-8)[0]  # NaN is the nonfinite rule's


def test_dead_gradients_everywhere_mean_no_learning_even_if_weights_move() -> None:
    base = {"update__a": 1e-6, "update__b": 1e-6, "trainable__a": 2, "trainable__b": 4,
            "trainable__frozen": 0, "dead_grads__frozen": 0, "frozen__frozen": 3}
    ok, why = learned(values(**base, dead_grads__a=2, dead_grads__b=4), 1e-8)
    assert not ok and why.startswith("every trainable parameter's gradient was exactly 0 or "
                                     "missing (6 tensors in 2 modules)")
    assert learned(values(**base, dead_grads__a=2, dead_grads__b=3), 1e-8)[0]
    assert learned(values(**base, dead_grads__a=2), 1e-8)[0]  # b's count unknown


def feed(engine: AlertEngine, steps: list[Step]) -> list[tuple[int, str, str]]:
    return [(s.step, c.kind, c.alert.rule) for s in steps for c in engine.observe(s)]


def test_the_engine_fires_after_k_steps_keeps_the_streak_over_silent_steps_and_resolves() -> None:
    engine = AlertEngine(AlertConfig(stall_steps=3, resolve_after=2))
    stuck = {"update__m": 0.0}
    steps = [at(0, **stuck), at(1), at(2, **stuck), at(3, **stuck), at(4, **stuck),
             at(5, update__m=0.1), at(6), at(7, update__m=0.1)]
    assert feed(engine, steps) == [(3, "opened", "no_learning"), (4, "updated", "no_learning"),
                                   (7, "resolved", "no_learning")]


def test_normalisation_findings() -> None:
    step = at(7, normalisation__d__denominator_min=1e-9, normalisation__d__eps=1e-6,
              normalisation__e__denominator_min=2e-7,  # no eps sent: the default 1e-6
              normalisation__f__denominator_min=1e-5, normalisation__f__eps=1e-6,
              normalisation__g__denominator_min=math.nan,  # the nonfinite rule's
              normalisation__d__valid_zero=2, normalisation__f__valid_zero=0)
    found = {f.series: f for f in normalisation(step, step_values(step))}
    assert sorted(found) == ["scalar/normalisation/d/denominator_min",
                             "scalar/normalisation/d/valid_zero",
                             "scalar/normalisation/e/denominator_min"]
    assert found["scalar/normalisation/e/denominator_min"].details == {"value": 2e-7,
                                                                       "eps": 1e-6}
    zero = found["scalar/normalisation/d/valid_zero"]
    assert (zero.severity, zero.message) == (
        "warning", "Degenerate normalisation at step 7: 2 samples have no valid pixel for d; "
        "a mean over them is 0/0 unless the loss guards it.")


def test_names_with_slashes_keep_their_last_part_as_the_statistic() -> None:
    step = Step(run="r", session="s", seq=2, step=1,
                scalars={"normalisation/loss/points/denominator_min": 0.0})
    (f,) = normalisation(step, step_values(step))
    assert "the denominator loss/points fell to 0" in f.message


def test_steps_a_grad_scaler_skipped_do_not_count_as_not_learning() -> None:
    """A GradScaler skips the optimizer step while it finds its scale: nothing moves then, by
    design. Such steps neither make nor extend a no-learning or a dead-module streak."""
    engine = AlertEngine(AlertConfig(stall_steps=3, amp_skip_steps=20))
    skipped = {"update__a": 0.0, "update__b": 0.0, "trainable__a": 1, "trainable__b": 1,
               "dead_grads__a": 1, "dead_grads__b": 0, "amp__skipped": 1.0}
    moving = {"update__a": 1e-3, "update__b": 1e-3, "amp__skipped": 0.0}
    steps = [at(n, **skipped) for n in range(8)] + [at(n, **moving) for n in range(8, 12)]
    assert feed(engine, steps) == []
    # the same steps without the scaler's word are a failure to learn
    plain = {k: v for k, v in skipped.items() if k != "amp__skipped"}
    assert ("no_learning" in {rule for _, _, rule in feed(AlertEngine(AlertConfig(stall_steps=3)),
                                                            [at(n, **plain) for n in range(8)])})


def test_skipping_that_persists_or_a_collapsed_scale_is_one_amp_finding() -> None:
    def run(scale_of: Callable[[int], float]) -> list[tuple[int, str, str]]:
        engine = AlertEngine(AlertConfig(amp_skip_steps=20, amp_scale_floor=1.0))
        return feed(engine, [at(n, amp__skipped=float(n >= 5), amp__scale=scale_of(n))
                             for n in range(30)])

    persists = run(lambda n: 2.0**16)  # the scale stays high, the skips do not end
    assert persists[0] == (24, "opened", "amp")  # the 20th consecutive skip
    collapses = run(lambda n: 2.0 ** (16 - n))  # halved on every skip: below 1 at step 17
    assert collapses[0] == (17, "opened", "amp")
    assert {rule for _, _, rule in persists} == {"amp"}  # nothing else fires beside it
    warm_up = feed(AlertEngine(AlertConfig(amp_skip_steps=20)),
                   [at(n, amp__skipped=float(n < 10), amp__scale=2.0 ** (24 - min(n, 10)))
                    for n in range(30)])
    assert warm_up == []  # ten skips while the scale is found: data, not an incident


def test_skipped_steps_neither_resolve_an_open_no_learning_alert_nor_hide_other_nans() -> None:
    engine = AlertEngine(AlertConfig(stall_steps=3, resolve_after=2))
    stuck = {"update__m": 0.0}
    opened = feed(engine, [at(n, **stuck) for n in range(4)])
    assert (2, "opened", "no_learning") in opened  # the third step without an update
    skipped = [at(n, update__m=0.0, amp__skipped=1.0) for n in range(4, 10)]
    assert [c for c in feed(engine, skipped) if c[2] == "no_learning"] == []  # still open
    # on a skipped step a NaN of the user's own scalar is an alert as on any other step
    changes = feed(engine, [at(10, update__m=0.0, amp__skipped=1.0, iou=math.nan)])
    assert (10, "opened", "nonfinite") in changes


def test_on_a_skipped_step_a_trainers_own_grad_norm_scalar_is_data_too() -> None:
    engine = AlertEngine(AlertConfig())
    changes = feed(engine, [at(0, amp__skipped=1.0, hf__grad_norm=math.nan)])
    assert changes == []  # the HF Trainer logs the (scaled) norm of a skipped step as NaN
    assert (1, "opened", "nonfinite") in feed(engine, [at(1, hf__grad_norm=math.nan)])
