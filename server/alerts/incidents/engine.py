"""The incident lifecycle: alert changes in, incident changes out (opened, escalated, updated,
resolved), one run at a time.

Per step of a rank, the alerts that *opened* are grouped: one that an open incident of the run
explains (``causes.explained_by``) joins it as evidence; the rest are new roots — the most
upstream (``causes.order_key``) opens an incident and takes every other new alert it
explains, and whatever is left opens the next. Alerts that are held again refresh their
evidence; an incident resolves when every one of its alerts has resolved, and stays visible.
When evidence arrives that began earlier in the causal order than the root (another rank's
forward, a late op-level trace), it becomes the root and the headline is written again.

Pure and synchronous: feed it from one task, after the alert engine.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace

from trainvitals.protocol import Step
from trainvitals.server.alerts.incidents.causes import explained_by, order_key
from trainvitals.server.alerts.incidents.context import Recent
from trainvitals.server.alerts.incidents.diagnose import Diagnosis, diagnose
from trainvitals.server.alerts.incidents.model import (
    ChangeKind,
    Evidence,
    EvidenceKey,
    Incident,
    IncidentChange,
)
from trainvitals.server.alerts.model import Alert, AlertChange, Severity

__all__ = ["IncidentEngine"]

log = logging.getLogger("trainvitals.server")
_RANK = {"warning": 0, "critical": 1}


@dataclass
class _Run:
    """One run's incidents: the open ones, and which alert belongs to which."""

    name: str
    count: int = 0  # incidents ever numbered on this run (restored ones included)
    open: dict[int, Incident] = field(default_factory=dict)
    member: dict[EvidenceKey, int] = field(default_factory=dict)


class IncidentEngine:
    """Groups each run's alerts into incidents; see the module docstring. Not thread-safe."""

    def __init__(self) -> None:
        self._runs: dict[str, _Run] = {}
        self._recent = Recent()
        self.errors = 0  # diagnoses that raised (their incident keeps its last headline)

    # ------------------------------------------------------------ feeding

    def observe(self, step: Step, changes: Sequence[AlertChange]) -> list[IncidentChange]:
        """The incident changes that ``step``'s alert ``changes`` make."""
        self._recent.note(step)
        run = self._run(step.run)
        touched: dict[int, ChangeKind] = {}
        fresh: list[Alert] = []
        for change in changes:
            alert = change.alert
            key = (alert.rank, alert.rule, alert.series)
            number = run.member.get(key)
            if number is not None and number in run.open:
                self._refresh(run, number, alert)
                touched.setdefault(number, "updated")
            elif change.kind != "resolved":
                fresh.append(alert)
        opened, attached = self._adopt(run, fresh, step.step)
        for number in attached:
            touched.setdefault(number, "updated")
        for number in opened:
            touched[number] = "opened"
        return [c for number, kind in touched.items()
                if (c := self._settle(run, number, kind, step.step)) is not None]

    def load_open(self, incidents: Iterable[Incident]) -> None:
        """Restore incidents that were open before a restart (their alerts are restored by the
        alert engine), so later findings join them instead of opening new ones."""
        for incident in incidents:
            run = self._run(incident.run)
            run.count = max(run.count, incident.number)
            if incident.state == "resolved" or incident.number in run.open:
                continue
            run.open[incident.number] = incident
            for e in incident.evidence:
                run.member[e.key] = incident.number

    def note_numbered(self, run: str, count: int) -> None:
        """``count`` incidents of ``run`` exist already (stored): number new ones after them."""
        state = self._run(run)
        state.count = max(state.count, count)

    def _run(self, name: str) -> _Run:
        state = self._runs.get(name)
        if state is None:
            state = self._runs[name] = _Run(name)
        return state

    def forget(self, run: str) -> None:
        """Drop every incident and memory of ``run``, without emitting changes."""
        self._runs.pop(run, None)
        self._recent.forget(run)

    def open_incidents(self, run: str | None = None) -> list[Incident]:
        """The open incidents, of one run or of all, by run and then by number."""
        names = sorted(n for n in self._runs if run is None or n == run)
        return [i for n in names for _, i in sorted(self._runs[n].open.items())]

    # ------------------------------------------------------------ grouping

    def _adopt(self, run: _Run, fresh: list[Alert], step: int) -> tuple[list[int], set[int]]:
        """Attach each new alert to an open incident that explains it, else open incidents
        for the rest, most upstream first; the numbers of the incidents opened, and of those
        that took new evidence."""
        pending: list[Evidence] = []
        attached: set[int] = set()
        for alert in fresh:
            evidence = Evidence.of(alert)
            home = next((n for n, i in sorted(run.open.items())
                         if explained_by(evidence.rule, i.evidence)), None)
            if home is None:
                pending.append(evidence)
            else:
                self._attach(run, home, evidence)
                attached.add(home)
        opened = []
        pending.sort(key=order_key)
        while pending:
            root, *rest = pending
            group = [root]
            for e in rest:  # a new alert joins when what the group holds explains it
                if explained_by(e.rule, group):
                    group.append(e)
            pending = [e for e in rest if e not in group]
            opened.append(self._open(run, group, step))
        return opened, attached

    def _open(self, run: _Run, group: list[Evidence], step: int) -> int:
        run.count += 1
        root = group[0]
        incident = Incident(
            run=run.name, number=run.count, kind="", severity=_worst(group),
            state="open", onset_step=root.first_step, rank=root.rank, opened_step=step,
            last_step=step, resolved_step=None, headline="", remedy="",
            evidence=tuple(sorted(group, key=order_key)))
        run.open[run.count] = incident
        for e in group:
            run.member[e.key] = run.count
        return run.count

    def _attach(self, run: _Run, number: int, evidence: Evidence) -> None:
        incident = run.open[number]
        run.open[number] = replace(incident, evidence=tuple(
            sorted((*incident.evidence, evidence), key=order_key)))
        run.member[evidence.key] = number

    def _refresh(self, run: _Run, number: int, alert: Alert) -> None:
        incident = run.open[number]
        fresh = Evidence.of(alert)
        run.open[number] = replace(incident, evidence=tuple(sorted(
            (fresh if e.key == fresh.key else e for e in incident.evidence), key=order_key)))

    # ------------------------------------------------------------ settling

    def _settle(self, run: _Run, number: int, kind: ChangeKind, step: int
                ) -> IncidentChange | None:
        """Re-root, re-diagnose and re-state incident ``number`` after this step's changes."""
        incident = run.open[number]
        root = incident.evidence[0]
        severity = _worst(incident.evidence)
        state = incident.state
        escalated_step = incident.escalated_step
        if kind != "opened" and _RANK[severity] > _RANK[incident.severity]:
            state, kind = "escalated", "escalated"
            escalated_step = step  # the step whose findings made it critical
        incident = replace(incident, onset_step=root.first_step, rank=root.rank,
                           severity=severity, state=state, last_step=step,
                           escalated_step=escalated_step)
        incident = self._diagnosed(incident)
        if all(e.state == "resolved" for e in incident.evidence):
            incident = replace(incident, state="resolved", resolved_step=step)
            del run.open[number]
            for e in incident.evidence:
                run.member.pop(e.key, None)
            kind = "resolved"
        else:
            run.open[number] = incident
        return IncidentChange(kind, incident)

    def _diagnosed(self, incident: Incident) -> Incident:
        try:
            found: Diagnosis = diagnose(
                incident.evidence, self._recent.of(incident.run, incident.rank),
                incident.onset_step, incident.rank, self._recent.ranks(incident.run),
                known_why=_known_why(incident), escalated=incident.state == "escalated",
                known_what=_known(incident, "what"), known_kind=_known(incident, "what_kind"))
        except Exception:  # odd evidence must not stop ingest; the old words stay
            self.errors += 1
            log.exception("diagnosing incident %d of run %r failed", incident.number,
                          incident.run)
            return incident if incident.headline else replace(
                incident, kind=incident.evidence[0].rule,
                headline=incident.evidence[0].message)
        return replace(incident, kind=found.kind, headline=found.headline,
                       remedy=found.remedy, facts=found.facts)


def _known_why(incident: Incident) -> str | None:
    """The why found for this onset before, if any (None: look again)."""
    return _known(incident, "why")


def _known(incident: Incident, fact: str) -> str | None:
    """A fact the last diagnosis of this same onset found (None: none, or another onset)."""
    facts = incident.facts
    if fact not in facts or facts.get("onset") != incident.onset_step:
        return None
    return str(facts[fact])


def _worst(evidence: Iterable[Evidence]) -> Severity:
    return "critical" if any(e.severity == "critical" for e in evidence) else "warning"
