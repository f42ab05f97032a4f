"""The incident records: evidence (a snapshot of one alert), the incident, its changes.

Frozen and replaced on every change, like ``Alert``: a change hands out its incident as the
snapshot, which sinks may keep or send later.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from trainvitals.server.alerts.model import Alert, AlertState, Details, Severity

__all__ = ["ChangeKind", "Evidence", "Incident", "IncidentChange", "IncidentState"]

IncidentState = Literal["open", "escalated", "resolved"]
ChangeKind = Literal["opened", "escalated", "updated", "resolved"]
EvidenceKey = tuple[int, str, str]  # (rank, rule, series)


@dataclass(frozen=True, slots=True)
class Evidence:
    """One finding that belongs to an incident: the alert it opened, as it stands now."""

    rank: int
    rule: str
    series: str
    severity: Severity
    first_step: int
    last_step: int
    count: int
    state: AlertState
    message: str
    details: Details = field(default_factory=dict)

    @property
    def key(self) -> EvidenceKey:
        return (self.rank, self.rule, self.series)

    @classmethod
    def of(cls, alert: Alert) -> Evidence:
        return cls(alert.rank, alert.rule, alert.series, alert.severity, alert.first_step,
                   alert.last_step, alert.count, alert.state, alert.message, alert.details)


@dataclass(frozen=True, slots=True)
class Incident:
    """One root cause on one run.

    ``number`` counts the run's incidents from 1. ``kind`` names the cause (``overflow``,
    ``guard_stall``, ``lr_spike``, … see docs/alerts.md); ``onset_step`` and ``rank`` are where
    the root finding began; ``evidence`` is every finding that followed, root first.
    ``state`` is ``open``, ``escalated`` (its severity rose after it opened) or ``resolved``
    (none of its findings holds any more; it stays visible). An incident that opened as a
    warning (an overflow risk) and escalated says when in ``escalated_step``: the warning came
    first, the failure then.
    """

    run: str
    number: int
    kind: str
    severity: Severity
    state: IncidentState
    onset_step: int
    rank: int
    opened_step: int
    last_step: int
    resolved_step: int | None
    headline: str
    remedy: str
    evidence: tuple[Evidence, ...]
    facts: Details = field(default_factory=dict)
    escalated_step: int | None = None  # when a warning became critical (it then failed)

    @property
    def key(self) -> tuple[str, int]:
        return (self.run, self.number)

    @property
    def ranks(self) -> list[int]:
        """Every rank with evidence, the root's first."""
        seen = [self.rank]
        seen += sorted({e.rank for e in self.evidence} - {self.rank})
        return seen

    @property
    def evidence_count(self) -> int:
        return len(self.evidence)


@dataclass(frozen=True, slots=True)
class IncidentChange:
    """An incident opened, escalated, changed (evidence, headline, last step) or resolved."""

    kind: ChangeKind
    incident: Incident
