"""Incidents as the stores keep them: scalar columns plus one JSON column (``body``) holding
the evidence and the diagnosis facts, NaN/±Inf as their wire strings. Both stores use these
two functions, so an incident reads back the same from either."""

from __future__ import annotations

import json
from typing import Any

from trainvitals.server.alerts.incidents import Evidence, Incident
from trainvitals.server.store.codec import decode_details, dumps_json

__all__ = ["INCIDENT_COLUMNS", "incident_from_row", "incident_values"]

# The columns after (run_id, number), in the order of incident_values.
INCIDENT_COLUMNS = ("kind", "severity", "state", "onset_step", "rank", "opened_step",
                    "last_step", "resolved_step", "headline", "remedy", "body")


def incident_values(incident: Incident) -> tuple[Any, ...]:
    """The values of ``INCIDENT_COLUMNS`` for ``incident``."""
    body = {"evidence": [_evidence(e) for e in incident.evidence], "facts": incident.facts,
            "escalated_step": incident.escalated_step}
    return (incident.kind, incident.severity, incident.state, incident.onset_step,
            incident.rank, incident.opened_step, incident.last_step, incident.resolved_step,
            incident.headline, incident.remedy, dumps_json(body))


def incident_from_row(run: str, number: int, row: tuple[Any, ...]) -> Incident:
    """The incident of ``run`` numbered ``number`` from its ``INCIDENT_COLUMNS`` values."""
    (kind, severity, state, onset, rank, opened, last, resolved, headline, remedy, body) = row
    data = json.loads(body) if body else {}
    evidence = tuple(Evidence(**{**e, "details": decode_details(e.get("details", {}))})
                     for e in data.get("evidence", []))
    return Incident(run=run, number=number, kind=kind, severity=severity, state=state,
                    onset_step=onset, rank=rank, opened_step=opened, last_step=last,
                    resolved_step=resolved, headline=headline, remedy=remedy,
                    evidence=evidence, facts=decode_details(data.get("facts", {})),
                    escalated_step=data.get("escalated_step"))


def _evidence(e: Evidence) -> dict[str, Any]:
    return {"rank": e.rank, "rule": e.rule, "series": e.series, "severity": e.severity,
            "first_step": e.first_step, "last_step": e.last_step, "count": e.count,
            "state": e.state, "message": e.message, "details": e.details}
