"""The ``amp`` rule: a mixed-precision GradScaler that cannot find a scale.

A GradScaler skips the optimizer step when the scaled gradients overflow and halves its scale:
that is how it finds a scale that fits, in the first steps of every AMP run and now and then
later. Those steps are data (``nonfinite`` leaves their gradients alone, see ``amp_skipped``).
A failure is when that search does not end: the scaler skipped ``amp_skip_steps``
consecutive steps, or its scale fell below ``amp_scale_floor`` — then even unscaled gradients
are non-finite, and the cause is in the forward or the loss, not in the scale. Critical.
Reads the scalars of ``Monitor.watch_scaler``: ``amp/skipped`` and ``amp/scale``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from trainvitals.protocol import Step
from trainvitals.protocol.series import AMP_SCALE, AMP_SKIPPED, scalar_series
from trainvitals.server.alerts import text
from trainvitals.server.alerts.memory import Streak
from trainvitals.server.alerts.model import AlertConfig, Details, Finding
from trainvitals.server.alerts.rule import Rule, RuleContext

__all__ = ["RULE", "amp", "amp_skipped"]

SKIPPED, SCALE = scalar_series(AMP_SKIPPED), scalar_series(AMP_SCALE)


def amp_skipped(step: Step) -> bool:
    """Whether a GradScaler skipped this step's optimizer step (its gradients overflowed)."""
    return step.scalars.get(AMP_SKIPPED, 0.0) > 0


def amp(step: Step, values: Mapping[str, float], streak: Streak,
        config: AlertConfig) -> list[Finding]:
    """Update ``streak`` of skipped steps; a finding when skipping persists or the scale
    collapsed."""
    if SKIPPED not in values:
        return []
    streak.update(amp_skipped(step), step.step)
    scale = values.get(SCALE, math.nan)
    collapsed = math.isfinite(scale) and scale < config.amp_scale_floor
    if streak.length < config.amp_skip_steps and not (collapsed and streak.length):
        return []
    assert streak.start is not None
    why = (f"its scale fell to {text.value(scale)}, below {text.value(config.amp_scale_floor)}"
           if collapsed else f"its scale is {text.value(scale)}")
    message = (
        f"The GradScaler skipped the optimizer step on {text.count(streak.length)} consecutive "
        f"steps since step {text.step(streak.start)}; {why}: the gradients are non-finite at "
        f"every scale, so the cause is in the forward or the loss, not in the scale."
    )
    details: Details = {"streak": streak.length, "since": streak.start, "scale": scale,
                        "floor": config.amp_scale_floor, "skip_steps": config.amp_skip_steps}
    return [Finding("amp", SKIPPED, "critical", message, details, streak.start)]


def _observes(series: str, step: Step, values: Mapping[str, float]) -> bool:
    return SKIPPED in values


def _judge(ctx: RuleContext) -> list[Finding]:
    return amp(ctx.step, ctx.values, ctx.memory.amp_streak, ctx.config)


RULE = Rule(
    "amp", _judge, severity="critical",
    summary="a GradScaler skipped `amp_skip_steps` (20) consecutive steps, or its scale fell "
            "below `amp_scale_floor` (1) while skipping; a few skipped steps while it finds "
            "its scale are data, not an incident",
    explains=frozenset({"amp", "nonfinite", "no_learning", "module_learning", "stall"}),
    observes=_observes,
)
