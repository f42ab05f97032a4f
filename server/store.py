"""The storage seam: what the server needs from a store, and the rows it gets back.

``SQLiteStore`` is the embedded default. Every method is synchronous: the writer calls the
write methods from its one thread; readers call from worker threads.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from trainvitals.protocol import Record
from trainvitals.server.alerts import Alert

__all__ = ["ClipRow", "RunRow", "SeriesData", "SeriesInfo", "Store", "WriteResult"]


@dataclass
class RunRow:
    """One run as listed: identity, status and progress."""

    id: int
    name: str
    status: str  # running | finished | crashed
    created: float
    updated: float
    last_step: int | None
    world_size: int
    ranks: list[int]
    dropped: int
    reason: str
    config: dict[str, Any]
    steps: int = 0
    first_time: float | None = None
    last_time: float | None = None
    open_alerts: dict[str, int] = field(default_factory=dict)


@dataclass
class SeriesInfo:
    """A series that exists for a run: its name, rank and number of points."""

    name: str
    rank: int
    points: int


@dataclass
class SeriesData:
    """Points of one series of one rank, in step order; NaN stays NaN."""

    name: str
    rank: int
    steps: list[int]
    values: list[float]


@dataclass
class ClipRow:
    """One recorded clip event."""

    rank: int
    step: int
    raw: float
    threshold: float
    action: str
    reason: str
    components: dict[str, float]


@dataclass
class WriteResult:
    """What a write committed: new records (duplicates left out) and each stream's top seq."""

    accepted: list[Record]
    run_ids: dict[str, int]
    top_seq: dict[tuple[str, int, str], int]


class Store(Protocol):
    """What the server needs from a store. Implementations must keep NaN and ±Inf exact."""

    def open(self) -> None:
        """Create or migrate the schema; call once before anything else."""

    def close(self) -> None:
        """Release connections."""

    def write(self, records: Sequence[Record]) -> WriteResult:
        """Commit records in one transaction, ignoring (run, rank, session, seq) seen before."""

    def save_alerts(self, alerts: Iterable[Alert]) -> None:
        """Insert or update alerts; an open alert is keyed by (run, rank, rule, series)."""

    def runs(self) -> list[RunRow]:
        """Every run, newest first."""

    def run(self, run_id: int) -> RunRow | None:
        """One run, or None."""

    def series_list(self, run_id: int) -> list[SeriesInfo]:
        """The series a run has."""

    def series(self, run_id: int, name: str, *, rank: int | None = None,
               start: int | None = None, end: int | None = None,
               limit: int | None = None) -> list[SeriesData]:
        """Points of one series (per rank), optionally within [start, end] steps."""

    def clips(self, run_id: int, *, start: int | None = None, end: int | None = None,
              limit: int | None = None) -> list[ClipRow]:
        """Clip events of a run in step order."""

    def alerts(self, *, run: str | None = None, state: str | None = None) -> list[Alert]:
        """Alerts, newest first, optionally of one run and state ("open" / "resolved")."""
