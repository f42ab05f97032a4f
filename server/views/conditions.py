"""A condition as JSON: the incident's shape (``views.incidents``) plus ``scope`` and times.

Webhook receivers and the page handle one shape for both. A condition has no evidence and,
for ``scope: "server"``, no run and no steps: ``run`` is ``""`` (no run can be called that),
the step fields and ``rank`` are ``null``.
"""

from __future__ import annotations

from typing import Any

from trainvitals.protocol.wire_json import to_wire
from trainvitals.server.alerts.conditions import Condition

__all__ = ["condition_json"]


def condition_json(condition: Condition, run_id: int | None = None) -> dict[str, Any]:
    """The condition's fields under the incident's names, with ``run_id`` when known."""
    c = condition
    body: dict[str, Any] = {
        "id": c.id, "scope": c.scope, "run": c.run, "number": c.number, "kind": c.kind,
        "severity": c.severity, "state": c.state, "headline": c.headline, "remedy": c.remedy,
        "onset_step": c.opened_step, "opened_step": c.opened_step, "last_step": c.last_step,
        "resolved_step": c.resolved_step, "escalated_step": None,
        "rank": c.ranks[0] if c.ranks else None, "ranks": list(c.ranks),
        "evidence": [], "evidence_count": 0, "facts": to_wire(c.facts),
        "opened_at": c.opened_at, "last_at": c.last_at, "resolved_at": c.resolved_at,
        "escalated_at": c.escalated_at,
    }
    if run_id is not None:
        body["run_id"] = run_id
    return body
