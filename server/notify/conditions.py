"""The server's conditions and where their changes go: the one place that measures nothing,
decides nothing, and tells everyone.

``ingest.readiness`` (the server's own trouble) and ``ingest.deliveries`` (a trainer's) say
what holds; the board (``alerts.conditions.Conditions``) decides what changed; each change
goes to every ``ConditionSink`` (terminal, browsers, webhooks). Call it on the event loop.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

from trainvitals.server.alerts.conditions import ConditionChange, Conditions, Reading, Scope
from trainvitals.server.notify.sinks import ConditionSink

__all__ = ["ConditionFeed"]

log = logging.getLogger("trainvitals.server")


class ConditionFeed:
    """Holds the board of conditions and hands each change to the sinks."""

    def __init__(self, sinks: Sequence[ConditionSink], *, board: Conditions | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.board = board if board is not None else Conditions()
        self._sinks, self._clock = list(sinks), clock

    def hold(self, scope: Scope, run: str, kind: str, reading: Reading) -> None:
        """``kind`` holds now, as ``reading`` says."""
        self._send(self.board.hold(scope, run, kind, reading, self._clock()))

    def clear(self, scope: Scope, run: str, kind: str, step: int | None = None) -> None:
        """``kind`` no longer holds (nothing happens if it was not open)."""
        self._send(self.board.clear(scope, run, kind, self._clock(), step))

    def _send(self, change: ConditionChange | None) -> None:
        if change is None:
            return
        for sink in self._sinks:
            try:
                sink.deliver_conditions([change])
            except Exception:  # one broken sink must not keep the others from hearing it
                log.exception("a condition sink failed")
