"""An incident as JSON for REST clients, the page and webhooks (one shape everywhere)."""

from __future__ import annotations

from typing import Any

from trainvitals.protocol.wire_json import to_wire
from trainvitals.server.alerts.incidents import Incident

__all__ = ["incident_json"]


def incident_json(incident: Incident, run_id: int | None = None) -> dict[str, Any]:
    """The incident's fields (NaN/±Inf as wire strings), with ``id`` (``<run>#<number>``,
    stable), ``run_id`` when known, ``ranks``, ``evidence_count`` and ``scope: "run"`` (the
    shape conditions share: ``views.conditions``)."""
    body: dict[str, Any] = to_wire(incident)
    body.update(id=f"{incident.run}#{incident.number}", ranks=incident.ranks,
                evidence_count=incident.evidence_count, scope="run")
    if run_id is not None:
        body["run_id"] = run_id
    return body
