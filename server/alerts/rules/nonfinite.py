"""The ``nonfinite`` rule: NaN or ±Inf in any reported value, tensor, or loss-guard input.

While the plugin's ``watch`` has located where the values started (``Step.origin``, kept per
rank until a step is clean), every message names it, and the series ``origin`` holds one alert
that says it in its headline.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import replace

from trainvitals.protocol import ClipEvent, NonFiniteOrigin, Step, TensorStats
from trainvitals.protocol.series import BACKWARD_FACTOR, DEAD_GRADS, TENSOR, UPDATE, scalar_series
from trainvitals.server.alerts import text
from trainvitals.server.alerts.model import Details, Finding
from trainvitals.server.alerts.origin import origin_details, origin_finding, origin_text
from trainvitals.server.alerts.rule import HEALTH, Rule, RuleContext
from trainvitals.server.alerts.rules.amp import amp_skipped

__all__ = ["RULE", "nonfinite"]


def nonfinite(step: Step, values: Mapping[str, float],
              origin: NonFiniteOrigin | None = None) -> list[Finding]:
    """Critical findings for every non-finite value, tensor and loss-guard input at this step.

    ``values`` is ``step_values(step)``; an empty tensor (count 0) has NaN stats by construction
    and is not reported. ``origin`` is the latest known origin of this rank's non-finite
    values: the findings name it, and one more finding on ``origin`` holds it while the step
    carries it or shows non-finite values.
    """
    found = _findings(step, values)
    if origin is None:
        return found
    named = [replace(f, message=f"{f.message} {origin_text(origin)}",
                     details={**f.details, **origin_details(origin)}) for f in found]
    if found or step.origin is not None:
        named.append(origin_finding(step, origin))
    return named


def _findings(step: Step, values: Mapping[str, float]) -> list[Finding]:
    found: list[Finding] = []
    for series, x in values.items():
        if not series.startswith(TENSOR) and not math.isfinite(x):
            found.append(_nonfinite_value(step, series, x))
    # One finding per series: when the loss itself is non-finite, its finding already says so.
    loss_finite = math.isfinite(values.get("loss", 0.0))
    if step.clip is not None and not math.isfinite(step.clip.raw) and loss_finite:
        found.append(_nonfinite_guard(step, step.clip))
    for name, stats in step.tensors.items():
        if _tensor_nonfinite(stats):
            found.append(_nonfinite_tensor(step, name, stats))
    return found


def _tensor_nonfinite(stats: TensorStats) -> bool:
    extremes = (stats.min, stats.max, stats.mean)
    return stats.nonfinite > 0 or (stats.count > 0 and not all(map(math.isfinite, extremes)))


def _nonfinite_value(step: Step, series: str, x: float) -> Finding:
    message = f"Non-finite value at step {text.step(step.step)}: {series} is {text.value(x)}."
    return Finding("nonfinite", series, "critical", message, {"value": x}, step.step)


def _nonfinite_guard(step: Step, event: ClipEvent) -> Finding:
    message = (
        f"Non-finite value at step {text.step(step.step)}: the loss guard saw a raw loss of "
        f"{text.value(event.raw)} (action {event.action})."
    )
    details: Details = {"value": event.raw, "action": event.action, "reason": event.reason}
    return Finding("nonfinite", "loss", "critical", message, details, step.step)


def _nonfinite_tensor(step: Step, name: str, stats: TensorStats) -> Finding:
    dtype = f" ({stats.dtype})" if stats.dtype else ""
    message = (
        f"Non-finite tensor at step {text.step(step.step)}: {name}{dtype} has "
        f"{text.count(stats.nan)} NaN, {text.count(stats.posinf)} +Inf, "
        f"{text.count(stats.neginf)} -Inf of {text.count(stats.count)} elements; {_spread(stats)}."
    )
    details: Details = {
        "count": stats.count, "nan": stats.nan, "posinf": stats.posinf, "neginf": stats.neginf,
        "min": stats.min, "max": stats.max, "mean": stats.mean, "dtype": stats.dtype,
    }
    return Finding("nonfinite", f"{TENSOR}{name}", "critical", message, details, step.step)


def _spread(stats: TensorStats) -> str:
    if math.isnan(stats.min):  # min/max/mean are over finite elements: NaN means there were none
        return "no finite element"
    extremes = (text.value(stats.min), text.value(stats.max), text.value(stats.mean))
    return "finite min {}, max {}, mean {}".format(*extremes)


def observes(series: str, step: Step, values: Mapping[str, float]) -> bool:
    """A tensor's series is judged when the step reports that tensor; ``origin`` every step
    (each says whether the run is still non-finite); a value when the step reports it."""
    if series.startswith(TENSOR):
        return series.removeprefix(TENSOR) in step.tensors
    if series == "origin":
        return True
    return series in values or (series == "loss" and step.clip is not None)


# What a GradScaler's skipped step leaves non-finite by design: the (scaled) gradients, what
# the watches compute from them, and scalars named as gradient quantities (a trainer's own
# "hf/grad_norm"). The forward, the loss, the tensors and every other scalar stay the rule's
# business.
_SCALED = ("grad_norm", "grad_norm_post", scalar_series(BACKWARD_FACTOR))
_FROM_GRADIENTS = tuple(scalar_series(f) for f in (DEAD_GRADS, UPDATE))


def _after_backward(finding: Finding) -> bool:
    if finding.series == "origin":
        return finding.details.get("origin_stage") == "backward"
    if finding.series in _SCALED or finding.series.startswith(_FROM_GRADIENTS):
        return True
    return finding.series.startswith("scalar/") and "grad" in finding.series.rsplit("/", 1)[-1]


def _judge(ctx: RuleContext) -> list[Finding]:
    broken = nonfinite(ctx.step, ctx.values, ctx.memory.active_origin())
    if amp_skipped(ctx.step):  # the scaler skipped this step: its gradients are data
        broken = [f for f in broken if not _after_backward(f)]
    if not broken:
        ctx.memory.origin_active = False  # a clean step ends the episode it explained
    return broken


RULE = Rule(
    "nonfinite", _judge, severity="critical",
    summary="any reported value is NaN/±Inf, or a watched tensor holds NaN/±Inf; names where "
            "it started when `watch` is on",
    explains=HEALTH, observes=observes,
)
