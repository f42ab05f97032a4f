"""Where alert changes go once committed: the terminal, and the browsers (through the hub).

Sinks are called on the event loop and must not block; each one is a thin adapter over
``AlertChange`` (the rules that produce them live in ``alerts``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Protocol

from trainvitals.protocol.wire_json import to_wire
from trainvitals.server.alerts import AlertChange
from trainvitals.server.live.hub import Hub

__all__ = ["AlertSink", "BrowserSink", "LogSink"]


class AlertSink(Protocol):
    """Receives every committed alert change, in order."""

    def deliver(self, changes: Sequence[AlertChange]) -> None:
        """Hand the changes on without blocking."""


class LogSink:
    """Writes openings and resolutions (not repeats) to the ``trainvitals.alerts`` logger."""

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self._log = logger or logging.getLogger("trainvitals.alerts")

    def deliver(self, changes: Sequence[AlertChange]) -> None:
        for change in changes:
            a = change.alert
            where = f"{a.run}" + (f" rank {a.rank}" if a.rank else "")
            if change.kind == "opened":
                level = logging.ERROR if a.severity == "critical" else logging.WARNING
                self._log.log(level, "ALERT %s [%s] %s @ step %d: %s",
                              a.severity.upper(), a.rule, where, a.opened_step, a.message)
            elif change.kind == "resolved":
                self._log.info("resolved [%s] %s @ step %s after %d step(s): %s",
                               a.rule, where, a.resolved_step, a.count, a.series)


class BrowserSink:
    """Pushes alert changes to browsers.

    Openings and resolutions go to every viewer (the runs list counts open alerts); the
    per-step "updated" repeats of an open alert go only to viewers of that run, so a long
    stall does not flood every page.
    """

    def __init__(self, hub: Hub) -> None:
        self._hub = hub

    def deliver(self, changes: Sequence[AlertChange]) -> None:
        for change in changes:
            audience = change.alert.run if change.kind == "updated" else None
            self._hub.publish(audience, {"type": "alert", "change": change.kind,
                                         "alert": to_wire(change.alert)})
