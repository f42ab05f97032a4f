"""The ``headroom`` rule: a tensor that feeds ``exp`` close to, or heading for, overflow.

The plugin sends ``headroom`` = ln(dtype max) − max for tensors marked ``feeds_exp`` (88.72 −
max for float32 and bfloat16, 11.09 − max for float16); their sum, the dtype's whole margin,
is the same for every step. Two conditions, on the series ``tensor/<name>/headroom``:

* level: less than ``headroom_warning`` (default 25%) of the margin left is a warning, less
  than ``headroom_critical`` (5%) critical — fractions, so one setting suits every dtype;
* trend: over the last ``headroom_window`` steps the max rose on all but at most one step,
  and at its least-squares slope it would reach the overflow within ``headroom_horizon``
  steps: a warning. A steadily growing pre-activation is how the π³ failure begins — the
  trainer's loss clip fires long before ``exp`` overflows, so the trend is what warns first.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence

from trainvitals.protocol import Step, TensorStats
from trainvitals.protocol.series import tensor_series
from trainvitals.server.alerts import text
from trainvitals.server.alerts.model import AlertConfig, Details, Finding, Severity
from trainvitals.server.alerts.rule import HEALTH, Rule, RuleContext
from trainvitals.server.alerts.rules.threshold import finite_and_reported

__all__ = ["RULE", "headroom", "slope"]


def headroom(step: Step, maxima: Mapping[str, Sequence[tuple[int, float]]],
             config: AlertConfig) -> list[Finding]:
    """Findings for every tensor with a finite headroom; ``maxima`` holds this step's max too."""
    found: list[Finding] = []
    for name, stats in step.tensors.items():
        room = stats.headroom
        if room is None or not (math.isfinite(room) and math.isfinite(stats.max)):
            continue  # NaN headroom: no finite element, the nonfinite rule's case
        margin = room + stats.max  # ln(dtype max), exactly what the plugin subtracted from
        level = _level(step, name, stats, margin, config)
        trend = _trend(step, name, stats, margin, maxima.get(name, ()), config)
        if level is not None:
            found.append(level)  # the level says more: it is about now, not a projection
        elif trend is not None:
            found.append(trend)
    return found


def slope(points: Sequence[tuple[int, float]]) -> float:
    """Least-squares slope of ``(step, value)`` points (0 for fewer than 2 distinct steps)."""
    n = len(points)
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    spread = sum((x - mean_x) ** 2 for x, _ in points)
    if spread == 0:
        return 0.0
    return sum((x - mean_x) * (y - mean_y) for x, y in points) / spread


def _level(step: Step, name: str, stats: TensorStats, margin: float,
           config: AlertConfig) -> Finding | None:
    room = stats.headroom
    assert room is not None
    severity: Severity
    if room < config.headroom_critical * margin:
        severity, fraction = "critical", config.headroom_critical
    elif room < config.headroom_warning * margin:
        severity, fraction = "warning", config.headroom_warning
    else:
        return None
    message = (
        f"Overflow risk at step {text.step(step.step)}: {_tensor(name, stats)} max "
        f"{text.value(stats.max)} leaves {text.value(room)} before exp overflows at "
        f"{text.value(margin)} (less than {text.percent(fraction)} of the margin)."
    )
    details: Details = {"headroom": room, "max": stats.max, "limit": margin,
                        "fraction": fraction, "dtype": stats.dtype}
    return Finding("headroom", tensor_series(name, "headroom"), severity, message, details,
                   step.step)


def _trend(step: Step, name: str, stats: TensorStats, margin: float,
           points: Sequence[tuple[int, float]], config: AlertConfig) -> Finding | None:
    if len(points) < config.headroom_window:
        return None
    rises = sum(b[1] > a[1] for a, b in itertools.pairwise(points))
    rate = slope(points)
    if rises < len(points) - 2 or rate <= 0:
        return None  # not a steady rise: noise, or a single jump the level rule judges
    room = stats.headroom
    assert room is not None
    steps_left = room / rate
    if steps_left > config.headroom_horizon:
        return None
    message = (
        f"Overflow risk at step {text.step(step.step)}: {_tensor(name, stats)} max rose on "
        f"{rises} of the last {len(points) - 1} steps, by {text.value(rate)} per step; at this "
        f"rate exp overflows (at {text.value(margin)}) in about {text.count(round(steps_left))} "
        f"steps (max {text.value(stats.max)}, headroom {text.value(room)})."
    )
    details: Details = {"headroom": room, "max": stats.max, "limit": margin, "slope": rate,
                        "steps_left": steps_left, "rises": rises, "window": len(points),
                        "dtype": stats.dtype}
    # first_step is this step, when the trend became clear — not the start of the window
    return Finding("headroom", tensor_series(name, "headroom"), "warning", message, details,
                   step.step)


def _tensor(name: str, stats: TensorStats) -> str:
    return f"{name} ({stats.dtype})" if stats.dtype else name


def _judge(ctx: RuleContext) -> list[Finding]:
    return headroom(ctx.step, ctx.memory.maxima, ctx.config)


RULE = Rule(
    "headroom", _judge, severity="warning or critical",
    summary="a tensor logged with `feeds_exp=True` has less than `headroom_warning` (50%: "
            "exp(max)² would overflow its dtype) / `headroom_critical` (5%) of its dtype's "
            "overflow margin left — at the first such step — or its max rises steadily "
            "toward overflow within `headroom_horizon` steps",
    explains=HEALTH - {"module_learning"}, observes=finite_and_reported,
)
