"""``grad_explosion`` and ``module_learning``: pure functions over steps and plain numbers."""

from __future__ import annotations

import math
import random

from trainvitals.protocol import Step
from trainvitals.protocol.series import step_values
from trainvitals.server.alerts import AlertConfig, AlertEngine
from trainvitals.server.alerts.memory import Streak
from trainvitals.server.alerts.rules.grad_explosion import grad_explosion
from trainvitals.server.alerts.rules.module_learning import module_findings


def at(n: int, **fields: object) -> Step:
    return Step(run="r", session="s", seq=n + 1, step=n, **fields)  # type: ignore[arg-type]


def logs(norms: list[float]) -> list[float]:
    return [math.log10(g) for g in norms]


def test_an_explosion_held_by_clipping_is_found_and_named() -> None:
    history = logs([2.0 + 0.5 * (i % 3) for i in range(20)])  # median 2.5
    (f,) = grad_explosion(at(30, grad_norm=4.0e4, grad_norm_post=1.0), history, AlertConfig())
    assert (f.rule, f.series, f.severity, f.first_step) == ("grad_explosion", "grad_norm",
                                                            "warning", 30)
    assert f.message == ("Gradient explosion at step 30: the pre-clip gradient norm 4e+04 is "
                         "×1.6e+04 the median 2.5 of the last 20 steps; clipping held the "
                         "applied norm to 1, which hides it.")


def test_ordinary_noise_and_a_short_history_never_explode() -> None:
    rng = random.Random(3)
    history = logs([math.exp(rng.gauss(0.0, 0.7)) for _ in range(50)])  # ×2 noise
    for _ in range(200):
        g = math.exp(rng.gauss(0.0, 0.7))
        assert grad_explosion(at(60, grad_norm=g), history, AlertConfig()) == []
    assert grad_explosion(at(5, grad_norm=1e6), history[:5], AlertConfig()) == []
    assert grad_explosion(at(5, grad_norm=math.inf), history, AlertConfig()) == []


def modules(step: int, **per_module: tuple[int, int, float]) -> Step:
    """``m=(trainable, dead, update)`` per module, as watch_optimizer reports them."""
    scalars: dict[str, float] = {}
    for m, (trainable, dead, update) in per_module.items():
        scalars |= {f"trainable/{m}": trainable, f"dead_grads/{m}": dead, f"update/{m}": update}
    return at(step, scalars=scalars)


def test_a_module_without_gradients_is_named_at_once_and_critical_after_stall_steps() -> None:
    streaks: dict[str, Streak] = {}
    config = AlertConfig(stall_steps=3)
    severities = []
    for n in range(4):
        step = modules(n, backbone=(4, 0, 1e-3), head=(2, 2, 0.0))
        (f,) = module_findings(step, step_values(step), streaks, config)
        severities.append(f.severity)
        assert (f.series, f.first_step, f.details["signature"]) == (
            "scalar/dead_grads/head", 0, "no_gradient")
    assert severities == ["warning", "warning", "critical", "critical"]


def test_a_module_with_gradients_that_does_not_move_says_it_is_not_optimised() -> None:
    step = modules(7, backbone=(4, 0, 1e-3), head=(2, 0, 0.0))
    step = at(7, scalars={**step.scalars, "not_optimised/head": 2.0})
    (f,) = module_findings(step, step_values(step), {}, AlertConfig())
    assert f.series == "scalar/update/head"
    assert "2 of its trainable parameter tensors are in no optimizer parameter group" in f.message


def test_a_whole_model_that_stops_is_not_blamed_on_one_module() -> None:
    step = modules(1, backbone=(4, 4, 0.0), head=(2, 2, 0.0))
    assert module_findings(step, step_values(step), {}, AlertConfig()) == []
    healthy = modules(1, backbone=(4, 0, 1e-3), head=(2, 0, 2e-3))
    assert module_findings(healthy, step_values(healthy), {}, AlertConfig()) == []


def test_the_engine_runs_every_registered_rule() -> None:
    engine = AlertEngine(AlertConfig())
    changes = [c for n in range(12) for c in engine.observe(
        at(n, loss=1.0, grad_norm=1.0 if n < 11 else 5e3))]
    assert [(c.kind, c.alert.rule) for c in changes] == [("opened", "grad_explosion")]
