"""The ``normalisation`` rule: a loss divided by (almost) nothing, or averaged over no pixel.

It reads the scalars of the plugin's ``Monitor.denominator(name, value, valid_count, eps)``:
``normalisation/<name>/denominator_min`` below ``normalisation/<name>/eps`` is critical (the
division that follows makes huge, Inf or NaN values); ``normalisation/<name>/valid_zero`` > 0
— samples without a single valid pixel — is a warning (a mean over nothing is 0/0 unless
the loss guards it).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from trainvitals.protocol import Step
from trainvitals.protocol.series import NORMALISATION, scalar_series
from trainvitals.server.alerts import text
from trainvitals.server.alerts.model import Details, Finding
from trainvitals.server.alerts.rule import HEALTH, Rule, RuleContext
from trainvitals.server.alerts.rules.threshold import finite_and_reported

__all__ = ["PREFIX", "RULE", "normalisation"]

PREFIX = scalar_series(NORMALISATION)
DEFAULT_EPS = 1e-6


def normalisation(step: Step, values: Mapping[str, float]) -> list[Finding]:
    """A finding per degenerate denominator and per name with samples lacking valid pixels."""
    found: list[Finding] = []
    for series, x in values.items():
        if not series.startswith(PREFIX) or not math.isfinite(x):
            continue  # a non-finite denominator is the nonfinite rule's
        name, _, stat = series.removeprefix(PREFIX).rpartition("/")
        if stat == "denominator_min":
            eps = values.get(f"{PREFIX}{name}/eps", DEFAULT_EPS)
            if x < eps:
                found.append(_tiny(step, series, name, x, eps))
        elif stat == "valid_zero" and x > 0:
            found.append(_no_valid(step, series, name, x))
    return found


def _tiny(step: Step, series: str, name: str, x: float, eps: float) -> Finding:
    message = (
        f"Degenerate normalisation at step {text.step(step.step)}: the denominator {name} "
        f"fell to {text.value(x)}, below ε = {text.value(eps)}; dividing by it makes huge, "
        f"Inf or NaN values."
    )
    details: Details = {"value": x, "eps": eps}
    return Finding("normalisation", series, "critical", message, details, step.step)


def _no_valid(step: Step, series: str, name: str, x: float) -> Finding:
    n = int(x)
    samples = "sample has" if n == 1 else "samples have"
    message = (
        f"Degenerate normalisation at step {text.step(step.step)}: {text.count(n)} {samples} "
        f"no valid pixel for {name}; a mean over them is 0/0 unless the loss guards it."
    )
    details: Details = {"samples": n}
    return Finding("normalisation", series, "warning", message, details, step.step)


def _judge(ctx: RuleContext) -> list[Finding]:
    return normalisation(ctx.step, ctx.values)


RULE = Rule(
    "normalisation", _judge, severity="critical or warning",
    summary="a `denominator` fell below its ε / a sample had no valid pixel",
    explains=HEALTH - {"module_learning"}, observes=finite_and_reported,
)
