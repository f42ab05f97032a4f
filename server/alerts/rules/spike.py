"""The ``spike`` rule: a raw loss far above a robust baseline of the recent finite raw losses.

The baseline is the median and the MAD (median absolute deviation) of the last ``spike_window``
finite raw losses, so one spike moves it by at most one rank position: a spike cannot hide the
next one, and only a lasting level shift becomes the new normal.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from trainvitals.protocol import Step
from trainvitals.server.alerts import text
from trainvitals.server.alerts.model import AlertConfig, Finding
from trainvitals.server.alerts.rule import HEALTH, Rule, RuleContext
from trainvitals.server.alerts.rules.threshold import finite_and_reported

__all__ = ["MAD_SCALE", "MEAN_AD_SCALE", "RELATIVE_FLOOR", "RULE", "Baseline", "baseline", "spike"]

MAD_SCALE = 1.4826  # MAD × this estimates σ for normal noise
MEAN_AD_SCALE = 1.2533  # mean absolute deviation × this estimates σ (√(π/2)), the MAD==0 fallback
# With MAD == 0 and mean AD ~ 0 (a flat or exactly repeating loss) any wobble would be "infinitely"
# many deviations away; floor the scale at 1% of the median so a spike must be a real jump
# (threshold 10 → at least +10% of the median).
RELATIVE_FLOOR = 0.01
ABSOLUTE_FLOOR = 1e-12  # for a median of exactly 0


@dataclass(frozen=True, slots=True)
class Baseline:
    """Robust centre and spread of recent losses; ``scale`` estimates their σ."""

    median: float
    mad: float
    scale: float
    size: int

    def z(self, x: float) -> float:
        """Robust z-score of ``x``: how many scales it lies above the median."""
        return (x - self.median) / self.scale


def baseline(history: Sequence[float]) -> Baseline:
    """The robust baseline of a non-empty sequence of finite losses."""
    median = statistics.median(history)
    deviations = [abs(x - median) for x in history]
    mad = statistics.median(deviations)
    scale = MAD_SCALE * mad
    if scale == 0:
        # Over half the losses equal the median exactly; the mean deviation still sees the rest.
        scale = MEAN_AD_SCALE * statistics.fmean(deviations)
    scale = max(scale, RELATIVE_FLOOR * abs(median), ABSOLUTE_FLOOR)
    return Baseline(median, mad, scale, len(history))


def spike(step: Step, history: Sequence[float], config: AlertConfig) -> list[Finding]:
    """A warning when the raw loss is finite, above the median, and its robust z > the threshold."""
    x = step.loss
    if x is None or not math.isfinite(x) or len(history) < config.spike_min_history:
        return []
    base = baseline(history)
    z = base.z(x)
    if not z > config.spike_threshold:  # a positive threshold also means x > median: rises only
        return []
    message = (
        f"Loss spike at step {text.step(step.step)}: raw loss {text.value(x)} is "
        f"{text.value(z)} robust deviations above the median {text.value(base.median)} of the "
        f"last {text.count(base.size)} finite losses (spread {text.value(base.scale)}, "
        f"threshold {text.value(config.spike_threshold)})."
    )
    details: dict[str, float | int | str] = {
        "loss": x, "median": base.median, "mad": base.mad, "scale": base.scale, "z": z,
        "history": base.size, "threshold": config.spike_threshold,
    }
    return [Finding("spike", "loss", "warning", message, details, step.step)]


def _judge(ctx: RuleContext) -> list[Finding]:
    return spike(ctx.step, ctx.memory.losses, ctx.config)


RULE = Rule(
    "spike", _judge, severity="warning",
    summary="the raw loss jumps far above a robust running baseline (median/MAD)",
    explains=HEALTH - {"module_learning"}, observes=finite_and_reported,
)
