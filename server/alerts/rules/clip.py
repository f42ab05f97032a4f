"""The ``clip`` rule: the trainer's loss guard fired (``if loss > clip: loss = loss * 0.0``).

A warning with the count and rate over the last ``clip_window`` steps. Every guard event is
also the evidence of the stall it may cause (see ``stall``).
"""

from __future__ import annotations

from trainvitals.protocol import ClipEvent, Step
from trainvitals.server.alerts import text
from trainvitals.server.alerts.model import Details, Finding
from trainvitals.server.alerts.rule import Rule, RuleContext

__all__ = ["RULE", "clip", "guard_text"]


def clip(step: Step, clipped: int, seen: int) -> list[Finding]:
    """A warning when the loss guard fired; ``clipped`` of the last ``seen`` steps, this one too."""
    event = step.clip
    if event is None:
        return []
    rate = clipped / seen if seen else 0.0
    message = (
        f"Loss guard fired at step {text.step(step.step)}: {guard_text(event)}, action "
        f"{event.action}. {text.count(clipped)} of the last {text.count(seen)} steps were "
        f"clipped ({text.percent(rate)})."
    )
    details: Details = {
        "count": clipped, "window": seen, "rate": rate, "raw": event.raw,
        "threshold": event.threshold, "action": event.action, "reason": event.reason,
    }
    return [Finding("clip", "loss", "warning", message, details, step.step)]


def guard_text(event: ClipEvent) -> str:
    """What the loss guard saw, e.g. ``raw loss 3.2e+04 > clip 10``."""
    raw = text.value(event.raw)
    if event.reason == "above_threshold":
        return f"raw loss {raw} > clip {text.value(event.threshold)}"
    return f"raw loss {raw} (guard reason {event.reason})"


def _judge(ctx: RuleContext) -> list[Finding]:
    return clip(ctx.step, ctx.memory.clipped, len(ctx.memory.clips))


RULE = Rule(
    "clip", _judge, severity="warning",
    summary="the loss guard fired (message: count and rate over the last 100 steps)",
    explains=frozenset({"clip", "stall", "no_learning", "module_learning", "spike"}),
)
