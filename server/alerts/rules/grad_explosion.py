"""The ``grad_explosion`` rule: the pre-clip gradient norm leaps orders of magnitude.

``clip_grad_norm_(…, 1.0)`` hides an explosion: the norm the optimizer applies stays at the
cap while the norm the loss produced grows ×100, ×10⁴, … The rule compares the pre-clip norm
(``grad_norm``) with a robust baseline of the last ``spike_window`` finite positive norms, in
log10: it fires when the norm is at least ``explosion_factor`` (×100) above their median *and*
its robust z-score in log space passes ``spike_threshold`` — noise of a healthy run moves the
norm by factors of a few, not by two orders of magnitude. A warning; with the applied norm
(``grad_norm_post``) it also says whether clipping held it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from trainvitals.protocol import Step
from trainvitals.server.alerts import text
from trainvitals.server.alerts.model import AlertConfig, Details, Finding
from trainvitals.server.alerts.rule import Rule, RuleContext
from trainvitals.server.alerts.rules.spike import baseline
from trainvitals.server.alerts.rules.threshold import finite_and_reported

__all__ = ["RULE", "grad_explosion"]


def grad_explosion(step: Step, history: Sequence[float], config: AlertConfig) -> list[Finding]:
    """A warning when ``step.grad_norm`` leaps far above the log10 ``history`` of norms."""
    g = step.grad_norm
    if g is None or not (math.isfinite(g) and g > 0) or len(history) < config.explosion_history:
        return []
    base = baseline(history)
    lg = math.log10(g)
    factor = 10 ** (lg - base.median)
    if factor < config.explosion_factor or not base.z(lg) > config.spike_threshold:
        return []
    median = 10 ** base.median
    held = _held(step, g)
    message = (
        f"Gradient explosion at step {text.step(step.step)}: the pre-clip gradient norm "
        f"{text.value(g)} is ×{text.value(factor)} the median {text.value(median)} of the last "
        f"{text.count(base.size)} steps{held}."
    )
    details: Details = {"grad_norm": g, "median": median, "factor": factor,
                        "history": base.size}
    if step.grad_norm_post is not None:
        details["grad_norm_post"] = step.grad_norm_post
    return [Finding("grad_explosion", "grad_norm", "warning", message, details, step.step)]


def _held(step: Step, g: float) -> str:
    post = step.grad_norm_post
    if post is None or not math.isfinite(post) or post >= 0.5 * g:
        return ""
    return f"; clipping held the applied norm to {text.value(post)}, which hides it"


def _judge(ctx: RuleContext) -> list[Finding]:
    return grad_explosion(ctx.step, ctx.memory.grad_logs, ctx.config)


RULE = Rule(
    "grad_explosion", _judge, severity="warning",
    summary="the pre-clip gradient norm is ≥ ×100 its recent median (robust, in log space), "
            "even when clipping holds the applied norm",
    explains=frozenset({"grad_explosion", "spike", "clip", "stall", "nonfinite", "headroom",
                        "no_learning", "threshold"}),
    observes=finite_and_reported,
)
