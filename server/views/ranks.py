"""Which rank went bad first, from a run's critical alerts.

Every rank reports its own series and alerts. In data-parallel training a fault on one rank
reaches the others within the same step — the all-reduce spreads a NaN gradient to every rank
— so the step alone does not tell the culprit. Ranks are ordered by the step their first
critical alert started at, then by how early in that step the bad value appeared (the stage of
its series), then by rank number:

0. the forward: where NaN/Inf started (``origin``), watched tensors, the raw loss and its
   components — what a rank computes on its own;
1. ``loss_used`` (after the trainer's guard);
2. ``grad_norm`` (gradients before clipping; under DDP possibly already all-reduced);
3. everything after: ``grad_norm_post``, updates, learning rate, stalls and user rules.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from trainvitals.protocol.series import parse_series
from trainvitals.server.alerts import Alert

__all__ = ["BadRank", "bad_ranks", "first_bad", "stage_of"]


@dataclass(frozen=True)
class BadRank:
    """The first critical alert of one rank: where and how it went bad."""

    rank: int
    step: int
    rule: str
    series: str
    message: str


def stage_of(series: str) -> int:
    """How early in a step ``series`` is measured (see the module docstring)."""
    if series in ("origin", "loss") or parse_series(series).kind in ("tensor", "component"):
        return 0
    return {"loss_used": 1, "grad_norm": 2}.get(series, 3)


def _order(alert: Alert) -> tuple[int, int, int]:
    return (alert.first_step, stage_of(alert.series), alert.rank)


def bad_ranks(alerts: Iterable[Alert]) -> list[BadRank]:
    """Each rank that had a critical alert, by its first one, the first-gone-bad first."""
    first: dict[int, Alert] = {}
    for alert in alerts:
        if alert.severity != "critical":
            continue
        seen = first.get(alert.rank)
        if seen is None or _order(alert) < _order(seen):
            first[alert.rank] = alert
    return [BadRank(a.rank, a.first_step, a.rule, a.series, a.message)
            for a in sorted(first.values(), key=_order)]


def first_bad(alerts: Iterable[Alert]) -> BadRank | None:
    """The rank that went bad first, or None while no rank has a critical alert."""
    ranked = bad_ranks(alerts)
    return ranked[0] if ranked else None
