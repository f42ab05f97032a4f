"""Throttled progress of every run, for every viewer's runs list.

``steps`` messages go only to viewers following a run; the runs list wants all runs' last step
and speed, which would be far too many messages at full rate. ``ProgressFeed`` sends each run's
``progress`` to every viewer at most once per ``interval`` seconds, and once more after the
interval when steps arrived meanwhile (so the last step is never left unsent).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from trainvitals.server.live.hub import Hub

__all__ = ["ProgressFeed"]


@dataclass
class _Run:
    run_id: int | None = None
    step: int | None = None
    time: float | None = None
    sent_at: float | None = None  # our clock, when the previous message went out
    sent_step: int | None = None
    sent_time: float | None = None  # trainer clock of the step sent then
    timer: asyncio.TimerHandle | None = None


class ProgressFeed:
    """Publishes ``{"type": "progress", run, run_id, last_step, time, steps_per_second}``."""

    def __init__(self, hub: Hub, interval: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._hub, self._interval, self._clock = hub, interval, clock
        self._runs: dict[str, _Run] = {}

    def note(self, run: str, run_id: int | None, updates: Iterable[Mapping[str, Any]]) -> None:
        """New committed steps of ``run`` (live ``steps`` records: ``step`` and ``time``)."""
        state = self._runs.setdefault(run, _Run())
        state.run_id = run_id if run_id is not None else state.run_id
        for u in updates:
            if state.step is None or u["step"] > state.step:
                state.step, state.time = int(u["step"]), float(u["time"])
        due = state.sent_at is None or self._clock() - state.sent_at >= self._interval
        if due:
            self._send(run)
        elif state.timer is None:
            wait = self._interval - (self._clock() - (state.sent_at or 0.0))
            # Without an event loop (direct use) there is no timer: the next note sends it.
            with contextlib.suppress(RuntimeError):
                state.timer = asyncio.get_running_loop().call_later(wait, self._send, run)

    def _send(self, run: str) -> None:
        state = self._runs[run]
        if state.timer is not None:
            state.timer.cancel()
            state.timer = None
        if state.step is None or state.step == state.sent_step:
            return
        rate = None
        if (state.sent_step is not None and state.sent_time is not None
                and state.time is not None and state.time > state.sent_time):
            rate = (state.step - state.sent_step) / (state.time - state.sent_time)
        state.sent_at, state.sent_step, state.sent_time = self._clock(), state.step, state.time
        self._hub.publish(None, {"type": "progress", "run": run, "run_id": state.run_id,
                                 "last_step": state.step, "time": state.time,
                                 "steps_per_second": rate})

    def close(self) -> None:
        """Cancel pending trailing messages."""
        for state in self._runs.values():
            if state.timer is not None:
                state.timer.cancel()
                state.timer = None
