"""The storage seam: what the server needs from a store, and the rows it gets back.

``SQLiteStore`` is the embedded default; ``PostgresStore`` (``store.postgres.store``)
is one database that several server replicas share. Every method is synchronous: the writer
calls the write methods from its one thread; readers call from worker threads.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from trainvitals.protocol import Record
from trainvitals.protocol.series import ValuesOf, step_values
from trainvitals.server.alerts import Alert
from trainvitals.server.alerts.incidents import Incident

__all__ = ["ClipRow", "OriginRow", "RunRow", "SeriesData", "SeriesInfo", "Store", "WriteResult"]


@dataclass
class RunRow:
    """One run as listed: identity, status and progress."""

    id: int
    name: str
    status: str  # running | finished | crashed (REST adds silent: see health.live_status)
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
    steps_per_second: float | None = None  # recent rate, from the lowest rank's step times
    open_incidents: dict[str, int] = field(default_factory=dict)  # open/escalated by severity
    incidents: int = 0  # every incident of the run, resolved ones too


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
class OriginRow:
    """Where a rank's non-finite values started (``Step.origin``); ``reported_step`` is the
    step of the latest record that said so."""

    rank: int
    step: int
    reported_step: int
    kind: str  # nan | inf
    stage: str  # forward | backward | input
    module: str | None
    module_type: str | None
    param: str | None
    op: str | None
    source: str | None


@dataclass
class WriteResult:
    """What a write committed: new records (duplicates left out) and, per stream it touched,
    the contiguous high-water mark: every seq up to and including it is stored. A stream
    whose seq 0 is not stored yet has no entry."""

    accepted: list[Record]
    run_ids: dict[str, int]
    top_seq: dict[tuple[str, int, str], int]


class Store(Protocol):
    """What the server needs from a store. Implementations must keep NaN and ±Inf exact."""

    def open(self) -> None:
        """Create or migrate the schema; call once before anything else."""

    def close(self) -> None:
        """Release connections."""

    def write(self, records: Sequence[Record], values_of: ValuesOf = step_values
              ) -> WriteResult:
        """Commit records in one transaction, ignoring (run, rank, session, seq) seen before.

        ``values_of`` gives a step's series values (the writer's shared ``StepValues``).

        Raises ``LimitExceeded`` (and stores nothing) when the records would pass a limit.
        """

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

    def series_m4(self, run_id: int, name: str, *, rank: int | None = None,
                  start: int | None = None, end: int | None = None,
                  buckets: int) -> list[SeriesData]:
        """Points of one series (per rank) in [start, end], downsampled for ``buckets`` pixel
        columns: exactly ``trainvitals.server.store.downsample.m4`` of the series' points.

        The steps the range holds, [lo, hi], are cut into ``downsample.columns(lo, hi,
        buckets)`` — at most ``buckets`` columns; runs of whole 1,024-step blocks when [lo, hi]
        touches at least ``buckets`` blocks, else equal step ranges — and each column keeps
        its first, last, finite min and finite max point (ties: the earliest step) and its
        first NaN, +Inf and -Inf, in step order. Columns may differ in width (by up to a
        block, and at the range's cut ends); callers plot the returned points as they are."""

    def clips(self, run_id: int, *, start: int | None = None, end: int | None = None,
              limit: int | None = None) -> list[ClipRow]:
        """Clip events of a run in step order."""

    def run_id(self, name: str) -> int | None:
        """The id of the run called ``name``, if it exists."""
        ...

    def save_incidents(self, incidents: Iterable[Incident]) -> None:
        """Insert or replace incidents, keyed by (run, number)."""

    def incidents(self, *, run: str | None = None, state: str | None = None
                  ) -> list[Incident]:
        """Incidents of one run (by name) or of all, in one state (``open`` means open or
        escalated) or all; newest run first, then by number."""
        ...

    def alerts(self, *, run: str | None = None, state: str | None = None) -> list[Alert]:
        """Alerts, newest first, optionally of one run and state ("open" / "resolved")."""

    def origins(self, run_id: int) -> list[OriginRow]:
        """Where non-finite values started, in step order (then rank)."""

    def delete_run(self, run_id: int) -> None:
        """Delete a run and all it holds (writer thread; retention uses it)."""

    def size_bytes(self) -> int:
        """Bytes the stored data occupies (retention keeps this under ``retain_bytes``)."""

    def ping(self) -> None:
        """Read from the database on the caller's thread; raises when it cannot be reached
        (the readiness check "database reachable")."""

    def probe(self) -> None:
        """Commit the smallest write there is (writer thread); raises what a failing commit
        would (after a failed commit, readiness asks this until storing works again)."""
