"""Where incident and alert changes go once committed, and condition changes once measured:
the terminal, and the browsers (through the hub).

Sinks are called on the event loop and must not block; each one is a thin adapter over
``AlertChange`` (the rules that produce them live in ``alerts``). A sink that also takes
conditions (``ConditionSink``: server or delivery trouble, ``alerts.conditions``) gets them
through ``deliver_conditions``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Protocol

from trainvitals.protocol.wire_json import to_wire
from trainvitals.server.alerts import AlertChange
from trainvitals.server.alerts.conditions import ConditionChange
from trainvitals.server.alerts.incidents import IncidentChange
from trainvitals.server.live.hub import Hub
from trainvitals.server.views.conditions import condition_json
from trainvitals.server.views.incidents import incident_json

__all__ = ["AlertSink", "BrowserSink", "ConditionSink", "LogSink"]


class AlertSink(Protocol):
    """Receives every committed alert and incident change, in order."""

    def deliver(self, changes: Sequence[AlertChange],
                incidents: Sequence[IncidentChange] = ()) -> None:
        """Hand the changes on without blocking."""


class ConditionSink(Protocol):
    """Receives every condition change, in order."""

    def deliver_conditions(self, changes: Sequence[ConditionChange]) -> None:
        """Hand the changes on without blocking."""


class LogSink:
    """One terminal line per incident opened, escalated or resolved — never per finding (the
    alerts behind an incident are its evidence, on the page and in the API)."""

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self._log = logger or logging.getLogger("trainvitals.alerts")

    def deliver(self, changes: Sequence[AlertChange],
                incidents: Sequence[IncidentChange] = ()) -> None:
        for change in incidents:
            i = change.incident
            if change.kind in ("opened", "escalated"):
                level = logging.ERROR if i.severity == "critical" else logging.WARNING
                tried = f" — try: {i.remedy}" if i.remedy else ""
                self._log.log(level, "INCIDENT %s%s %s #%d @ step %d: %s%s",
                              i.severity.upper(), " (escalated)" if change.kind == "escalated"
                              else "", i.run, i.number, i.onset_step, i.headline, tried)
            elif change.kind == "resolved":
                self._log.info("resolved incident %s #%d @ step %s (%d finding(s)): %s",
                               i.run, i.number, i.resolved_step, i.evidence_count, i.kind)

    def deliver_conditions(self, changes: Sequence[ConditionChange]) -> None:
        """One line per condition opened, escalated or resolved (updates are left out)."""
        for change in changes:
            c = change.condition
            where = "SERVER" if c.scope == "server" else f"run {c.run}"
            if change.kind in ("opened", "escalated"):
                level = logging.ERROR if c.severity == "critical" else logging.WARNING
                self._log.log(level, "%s %s%s %s: %s — try: %s", where, c.severity.upper(),
                              " (escalated)" if change.kind == "escalated" else "", c.kind,
                              c.headline, c.remedy)
            elif change.kind == "resolved":
                self._log.info("%s resolved %s: %s", where, c.kind, c.headline)


class BrowserSink:
    """Pushes incident and alert changes to browsers.

    Incident openings, escalations and resolutions go to every viewer (the runs list counts
    incidents, every page toasts them); an incident's other changes, and every alert change
    (alerts are evidence), go only to viewers of that run, so a long stall does not flood
    every page.
    """

    def __init__(self, hub: Hub) -> None:
        self._hub = hub

    def deliver(self, changes: Sequence[AlertChange],
                incidents: Sequence[IncidentChange] = ()) -> None:
        for change in changes:
            self._hub.publish(change.alert.run, {"type": "alert", "change": change.kind,
                                                 "alert": to_wire(change.alert)})
        for update in incidents:
            audience = update.incident.run if update.kind == "updated" else None
            self._hub.publish(audience, {"type": "incident", "change": update.kind,
                                         "incident": incident_json(update.incident)})

    def deliver_conditions(self, changes: Sequence[ConditionChange]) -> None:
        """Server conditions go to every viewer (the banner); a run's to every viewer when it
        opens, escalates or resolves, and its other updates to that run's viewers. Only this
        server's viewers: a condition is this process's own (``deliver``, never relayed to
        other replicas, whose REST answers would not know it)."""
        for change in changes:
            c = change.condition
            audience = c.run if c.scope == "run" and change.kind == "updated" else None
            self._hub.deliver(audience, {"type": "condition", "change": change.kind,
                                         "condition": condition_json(c)})
