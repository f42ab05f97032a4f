"""The ``no_learning`` rule: for ``stall_steps`` steps no module learned anything.

It reads the scalars of the plugin's ``watch_optimizer``: ``update/<m>`` (‖Δθ‖/‖θ‖ per
top-level module), ``dead_grads/<m>`` and ``trainable/<m>`` (parameter tensors whose gradient
was missing or exactly 0, of those that require one). A step learned nothing when

* every reported update is at most ``no_learning_ratio`` (the weights did not move), or
* every trainable parameter tensor of every module had a dead gradient — which catches the
  silent stall even while AdamW's weight decay still moves the weights a little.

Frozen parameters (``requires_grad=False``) are intended and never count. A step that reports
none of these scalars (``every=k``) neither extends nor breaks the streak.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from trainvitals.protocol import Step, series
from trainvitals.protocol.series import scalar_series
from trainvitals.server.alerts import text
from trainvitals.server.alerts.memory import Streak
from trainvitals.server.alerts.model import AlertConfig, Details, Finding
from trainvitals.server.alerts.rule import Rule, RuleContext
from trainvitals.server.alerts.rules.amp import amp_skipped

__all__ = ["RULE", "UPDATE", "learned", "no_learning", "reports_learning"]

UPDATE, DEAD, TRAINABLE = (scalar_series(family) for family in (series.UPDATE, series.DEAD_GRADS,
                                                                  series.TRAINABLE))


def reports_learning(values: Mapping[str, float]) -> bool:
    """Whether the step carries the optimizer watch's scalars at all."""
    return any(k.startswith((UPDATE, DEAD)) for k in values)


def learned(values: Mapping[str, float], ratio: float) -> tuple[bool, str]:
    """Whether anything learned at this step, and, if not, why not (for the message)."""
    updates = {k.removeprefix(UPDATE): v for k, v in values.items() if k.startswith(UPDATE)}
    if updates and all(math.isfinite(v) and v <= ratio for v in updates.values()):
        top = max(updates, key=lambda m: updates[m])
        return False, (f"every module's relative update ‖Δθ‖/‖θ‖ was at most "
                       f"{text.value(ratio)} (largest {text.value(updates[top])}, {top})")
    trainable = {k.removeprefix(TRAINABLE): v for k, v in values.items()
                 if k.startswith(TRAINABLE) and v > 0}
    dead = {m: values.get(f"{DEAD}{m}", math.nan) for m in trainable}
    if trainable and all(dead[m] >= trainable[m] for m in trainable):
        total = int(sum(trainable.values()))
        moved = f" (largest update {text.value(max(updates.values()))})" if updates else ""
        return False, (f"every trainable parameter's gradient was exactly 0 or missing "
                       f"({text.count(total)} tensors in {text.count(len(trainable))} "
                       f"modules); only weight decay can move the weights{moved}")
    return True, ""


def no_learning(step: Step, values: Mapping[str, float], streak: Streak,
                config: AlertConfig, is_open: bool) -> list[Finding]:
    """Update ``streak`` with this step and fire from its ``stall_steps``-th step (from its
    first while the alert is open)."""
    if not reports_learning(values):
        return []
    ok, why = learned(values, config.no_learning_ratio)
    streak.update(not ok, step.step)
    if streak.length < (1 if is_open else config.stall_steps) or streak.start is None:
        return []
    message = (
        f"No learning: for {text.count(streak.length)} consecutive steps since step "
        f"{text.step(streak.start)}, {why}."
    )
    details: Details = {"streak": streak.length, "since": streak.start,
                        "stall_steps": config.stall_steps, "ratio": config.no_learning_ratio}
    return [Finding("no_learning", "update", "critical", message, details, streak.start)]


def _observes(series: str, step: Step, values: Mapping[str, float]) -> bool:
    # a step a GradScaler skipped is neither a failure to learn nor a clean step
    return reports_learning(values) and not amp_skipped(step)


def _judge(ctx: RuleContext) -> list[Finding]:
    if amp_skipped(ctx.step):  # a GradScaler skipped it: nothing moved by design, not counted
        return []
    return no_learning(ctx.step, ctx.values, ctx.memory.learning_streak, ctx.config,
                       "update" in ctx.open_series)


RULE = Rule(
    "no_learning", _judge, severity="critical",
    summary="for `stall_steps` steps no module moved (‖Δθ‖/‖θ‖ ≤ 1e-8), or every trainable "
            "gradient was exactly 0 (even while weight decay still moves weights)",
    explains=frozenset({"no_learning", "module_learning", "stall"}), observes=_observes,
)
