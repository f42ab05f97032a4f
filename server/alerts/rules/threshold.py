"""The ``threshold`` rule: a series crosses a user rule such as ``tensor/depth_raw/max>15``."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

from trainvitals.protocol import Step
from trainvitals.server.alerts import text
from trainvitals.server.alerts.model import Details, Finding, Threshold
from trainvitals.server.alerts.rule import Rule, RuleContext

__all__ = ["RULE", "threshold"]


def threshold(
    step: Step, values: Mapping[str, float], thresholds: Iterable[Threshold]
) -> list[Finding]:
    """A finding per user threshold whose series is reported, finite, and meets the condition."""
    found: list[Finding] = []
    for limit in thresholds:
        x = values.get(limit.series)
        # Non-finite values are the nonfinite rule's; comparing them would double-report.
        if x is None or not math.isfinite(x) or not limit.holds(x):
            continue
        message = (
            f"Threshold crossed at step {text.step(step.step)}: {limit.series} = {text.value(x)} "
            f"{limit.op} {text.value(limit.value)}."
        )
        details: Details = {"value": x, "op": limit.op, "limit": limit.value}
        severity = limit.severity
        found.append(Finding("threshold", limit.series, severity, message, details, step.step))
    return found


def finite_and_reported(series: str, step: Step, values: Mapping[str, float]) -> bool:
    """Only a step that reports ``series`` as a finite value says anything about it."""
    return series in values and math.isfinite(values[series])


def _judge(ctx: RuleContext) -> list[Finding]:
    return threshold(ctx.step, ctx.values, ctx.config.thresholds)


RULE = Rule(
    "threshold", _judge, severity="yours",
    summary="a series crosses a `--threshold` rule",
    explains=frozenset({"threshold"}), observes=finite_and_reported,
)
