"""The rules: pure functions from one step (and what is remembered of earlier ones) to findings.

Rule names are stable strings that sinks and stored alerts rely on: ``nonfinite``, ``clip``,
``stall``, ``spike``, ``threshold``, ``headroom``, ``no_learning`` and ``normalisation``; only
``clip``, ``stall`` and ``threshold`` live here, the others have modules of their own.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping

from trainvitals.protocol import ClipEvent, Step
from trainvitals.protocol.series import TENSOR
from trainvitals.server.alerts import text
from trainvitals.server.alerts.learning import reports_learning
from trainvitals.server.alerts.memory import Streak
from trainvitals.server.alerts.model import Details, Finding, Threshold

__all__ = ["RULES", "clip", "guard_text", "observed", "stall", "threshold"]

RULES = ("nonfinite", "clip", "stall", "spike", "threshold", "headroom", "no_learning",
         "normalisation")


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


def stall(
    step: Step, loss_streak: Streak, grad_streak: Streak, k: int, open_series: Collection[str] = ()
) -> list[Finding]:
    """Critical findings for a zero backpropagated loss or a zero gradient held for ``k`` steps.

    A streak fires from its ``k``-th step on; a stall already open in ``open_series`` is held by
    any stalled step, so one passing batch in a stuck run does not resolve and reopen it.
    """
    found: list[Finding] = []
    if _fires(loss_streak, k, "loss_used" in open_series):
        found.append(_loss_stall(step, loss_streak, k))
    if _fires(grad_streak, k, "grad_norm" in open_series):
        found.append(_grad_stall(step, grad_streak, k))
    return found


def _fires(streak: Streak, k: int, is_open: bool) -> bool:
    return streak.length >= (1 if is_open else k)


def _loss_stall(step: Step, streak: Streak, k: int) -> Finding:
    assert streak.start is not None  # a streak of length >= 1 has a start
    event = step.clip
    clipped = " (clipped)" if event is not None and event.action == "zeroed" else ""
    cause = guard_text(event) if event is not None else f"raw loss {_optional(step.loss)}"
    message = (
        f"Silent stall: the backpropagated loss was 0{clipped} for {text.count(streak.length)} "
        f"consecutive steps since step {text.step(streak.start)}; {cause}. Gradients cannot flow."
    )
    details: Details = {"streak": streak.length, "since": streak.start, "stall_steps": k}
    if step.loss is not None:
        details["loss"] = step.loss
    if event is not None:
        details.update(raw=event.raw, threshold=event.threshold, action=event.action)
    return Finding("stall", "loss_used", "critical", message, details, streak.start)


def _grad_stall(step: Step, streak: Streak, k: int) -> Finding:
    assert streak.start is not None and step.loss is not None  # grad_stalled() requires a loss
    message = (
        f"Silent stall: the gradient norm before clipping was 0 for {text.count(streak.length)} "
        f"consecutive steps since step {text.step(streak.start)} while the raw loss was "
        f"{text.value(step.loss)} > 0. The loss does not reach any trainable parameter."
    )
    details: Details = {
        "streak": streak.length, "since": streak.start, "stall_steps": k, "loss": step.loss,
    }
    return Finding("stall", "grad_norm", "critical", message, details, streak.start)


def _optional(x: float | None) -> str:
    return "not reported" if x is None else text.value(x)


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


def observed(rule: str, series: str, step: Step, values: Mapping[str, float]) -> bool:
    """Whether ``step`` let ``rule`` judge ``series`` at all: only such steps count as clean.

    Tensors and heavy statistics may be reported every few steps; a step that lacks the series
    says nothing, so it must not count toward resolving the alert.
    """
    if rule == "nonfinite" and series.startswith(TENSOR):
        return series.removeprefix(TENSOR) in step.tensors
    if rule == "nonfinite" and series == "origin":
        return True  # every step says whether the run is still non-finite
    if rule == "no_learning":
        return reports_learning(values)
    if rule == "nonfinite":
        return series in values or (series == "loss" and step.clip is not None)
    if rule in ("spike", "threshold", "headroom", "normalisation"):
        return series in values and math.isfinite(values[series])
    return True  # stall and clip judge every step; unknown (restored) rules must still resolve
