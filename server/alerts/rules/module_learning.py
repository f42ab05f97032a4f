"""The ``module_learning`` rule: one module does not learn while the rest of the model does.

It reads ``watch_optimizer``'s scalars per top-level module ``m``: ``trainable/m``,
``dead_grads/m`` (trainable tensors whose gradient was missing or exactly 0),
``update/m`` (‖Δθ‖/‖θ‖) and ``not_optimised/m`` (trainable tensors in no optimizer group).
Two signatures, judged only while another module does learn (the whole model not learning is
``no_learning``'s):

* **no gradient** (series ``scalar/dead_grads/m``): every trainable tensor of ``m`` got no
  gradient — a ``.detach()`` or a branch that never reaches the loss;
* **no update** (series ``scalar/update/m``): ``m`` has gradients but its weights did not
  move — it is not in the optimizer, or its learning rate is 0.

A warning from the first such step (a module that may legitimately sit out one step resolves
again); critical once it lasted ``stall_steps`` steps.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from trainvitals.protocol import Step, series
from trainvitals.protocol.series import scalar_series
from trainvitals.server.alerts import text
from trainvitals.server.alerts.memory import Streak
from trainvitals.server.alerts.model import AlertConfig, Details, Finding, Severity
from trainvitals.server.alerts.rule import Rule, RuleContext
from trainvitals.server.alerts.rules.amp import amp_skipped
from trainvitals.server.alerts.rules.no_learning import reports_learning

__all__ = ["RULE", "module_findings"]

UPDATE, DEAD, TRAINABLE, NOT_OPTIMISED = (
    scalar_series(family) for family in (series.UPDATE, series.DEAD_GRADS, series.TRAINABLE,
                                         series.NOT_OPTIMISED))
MAX_MODULES = 1000  # streaks kept per rank


def _modules(values: Mapping[str, float]) -> dict[str, tuple[float, float, float | None]]:
    """``m → (trainable, dead, update)`` for every module with something trainable."""
    out: dict[str, tuple[float, float, float | None]] = {}
    for key, trainable in values.items():
        if key.startswith(TRAINABLE) and math.isfinite(trainable) and trainable > 0:
            m = key.removeprefix(TRAINABLE)
            out[m] = (trainable, values.get(f"{DEAD}{m}", math.nan), values.get(f"{UPDATE}{m}"))
    return out


def module_findings(step: Step, values: Mapping[str, float], streaks: dict[str, Streak],
                    config: AlertConfig) -> list[Finding]:
    """Findings for each module that does not learn while another one does."""
    modules = _modules(values)
    ratio = config.no_learning_ratio
    live = {m for m, (t, d, _) in modules.items() if d < t}
    moved = {m for m, (_, _, u) in modules.items()
             if u is not None and math.isfinite(u) and u > ratio}
    found: list[Finding] = []
    for m, (trainable, dead, update) in modules.items():
        no_grad = dead >= trainable and bool(live - {m})
        no_update = (m in live and update is not None and update <= ratio
                     and bool(moved - {m}))
        streak = _streak(streaks, m)
        if streak is None:
            continue
        streak.update(no_grad or no_update, step.step)
        if no_grad:
            found.append(_no_gradient(step, m, int(trainable), streak, config))
        elif no_update:
            found.append(_no_update(step, m, values, update or 0.0, streak, config))
    return found


def _streak(streaks: dict[str, Streak], m: str) -> Streak | None:
    if m not in streaks and len(streaks) >= MAX_MODULES:
        return None
    return streaks.setdefault(m, Streak())


def _severity(streak: Streak, config: AlertConfig) -> Severity:
    return "critical" if streak.length >= config.stall_steps else "warning"


def _since(streak: Streak) -> str:
    assert streak.start is not None
    if streak.length == 1:
        return f"at step {text.step(streak.start)}"
    return f"for {text.count(streak.length)} steps since step {text.step(streak.start)}"


def _no_gradient(step: Step, m: str, trainable: int, streak: Streak,
                 config: AlertConfig) -> Finding:
    assert streak.start is not None
    message = (
        f"Module {m} gets no gradient {_since(streak)}: all {text.count(trainable)} of its "
        f"trainable parameter tensors had a missing or exactly-0 gradient while other modules "
        f"learned. Is it cut off the graph (a .detach(), an unused branch)?"
    )
    details: Details = {"module": m, "trainable": trainable, "streak": streak.length,
                        "since": streak.start, "signature": "no_gradient"}
    return Finding("module_learning", f"{DEAD}{m}", _severity(streak, config), message,
                   details, streak.start)


def _no_update(step: Step, m: str, values: Mapping[str, float], update: float, streak: Streak,
               config: AlertConfig) -> Finding:
    assert streak.start is not None
    orphans = values.get(f"{NOT_OPTIMISED}{m}", 0.0)
    why = (f"{text.count(int(orphans))} of its trainable parameter tensors are in no optimizer "
           "parameter group" if orphans > 0 else
           "is it missing from the optimizer, or is its learning rate 0?")
    message = (
        f"Module {m} does not move {_since(streak)}: it has gradients but its relative update "
        f"‖Δθ‖/‖θ‖ was {text.value(update)} while other modules learned; {why}."
    )
    details: Details = {"module": m, "update": update, "not_optimised": orphans,
                        "streak": streak.length, "since": streak.start,
                        "signature": "no_update"}
    return Finding("module_learning", f"{UPDATE}{m}", _severity(streak, config), message,
                   details, streak.start)


def _observes(series_name: str, step: Step, values: Mapping[str, float]) -> bool:
    # a step a GradScaler skipped moved nothing by design: neither judged nor a clean step
    return bool(reports_learning(values)) and not amp_skipped(step)


def _judge(ctx: RuleContext) -> list[Finding]:
    if not reports_learning(ctx.values) or amp_skipped(ctx.step):
        return []  # a step a GradScaler skipped moved nothing by design: not counted
    return module_findings(ctx.step, ctx.values, ctx.memory.module_streaks, ctx.config)


RULE = Rule(
    "module_learning", _judge, severity="warning, then critical",
    summary="one module gets no gradient, or has gradients but does not move (not in the "
            "optimizer), while others learn: at once, critical after `stall_steps` steps",
    explains=frozenset({"module_learning", "no_learning"}), observes=_observes,
)
