"""What trainers say about their own delivery: spool backlog and dropped records, per stream.

A ``batch`` frame may carry the sender's ``backlog`` (``protocol.messages.Backlog``) and its
running ``dropped`` count. The endpoint hands every decoded frame here *before* the commit, so
a trainer is heard even while nothing can be stored; the writer tells us what each commit
stored (the stream's contiguous high-water mark), which shrinks the backlog we know of until
the sender's next frame reports it again. From that come

* gauges for /metrics: records and bytes in the spools of connected trainers, the age of the
  oldest unacknowledged record, the dropped records they reported;
* conditions on the run (``alerts.conditions``):
  ``spool_backlog`` — a warning when a stream's oldest unacknowledged record is older than
  ``backlog_warn_s``, critical when its spool is 90 % full (the plugin drops records beyond
  it); resolved once every stream of the run is under half that age and 80 % full, or has
  nothing left to deliver. A stream whose trainer disconnects with records left keeps it open:
  they wait in its spool for ``trainvitals sync``, which resolves it when it delivers them.
  ``records_dropped`` — a warning when a stream's dropped count grows; resolved once no
  stream of the run has dropped a record for ``DROP_QUIET_S`` seconds, or they have all gone.

The age is the trainer's latest report, grown by the time since while nothing of that stream
was stored (after a commit stores some of it, the next report says the new age). Call
everything on the event loop; ``totals`` may be read from any thread.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from trainvitals.protocol import Batch, Step
from trainvitals.protocol.messages import Backlog
from trainvitals.server.alerts.conditions import Reading
from trainvitals.server.alerts.model import Severity
from trainvitals.server.ingest.storage import mib
from trainvitals.server.notify.conditions import ConditionFeed
from trainvitals.server.store import WriteResult
from trainvitals.server.views.health import duration

__all__ = ["DROP_QUIET_S", "DeliveryReports", "Totals"]

log = logging.getLogger("trainvitals.server")
DROP_QUIET_S = 300.0
FULL, NEARLY_FULL = 0.9, 0.8  # spool fill: critical at, resolved under
MAX_STREAMS = 10_000  # streams tracked at once (each is a few hundred bytes)
Stream = tuple[str, int, str]


@dataclass
class _Stream:
    """What we know of one stream's delivery."""

    run: str
    rank: int
    session: str
    connection: int | None  # the connection that reports it now; None once it has gone
    backlog: Backlog | None = None
    heard_at: float = 0.0  # when the backlog was reported (monotonic)
    left: int = 0  # records still to deliver, as far as we know
    stored_up_to: int = -1
    progressed: bool = False  # a commit stored some of it since the report
    dropped: int = 0
    dropped_at: float = -float("inf")
    step: int | None = None  # the latest step it sent

    def age(self, now: float) -> float:
        if self.backlog is None or self.left == 0:
            return 0.0
        return self.backlog.oldest_age + (0.0 if self.progressed else now - self.heard_at)

    def held(self) -> int:
        """Bytes of the records still to deliver (the reported size, shrunk with what was
        stored since)."""
        b = self.backlog
        if b is None or not b.records:
            return 0
        return round(b.bytes * min(1.0, self.left / b.records))

    def fill(self) -> float:
        """How full the spool is (0 when it has no limit: nothing is dropped)."""
        b = self.backlog
        return self.held() / b.max_bytes if b is not None and b.max_bytes else 0.0


@dataclass(frozen=True)
class Totals:
    """Over the streams of connected trainers (for /metrics)."""

    streams: int
    records: int
    bytes: int
    oldest_age: float
    dropped: int


class DeliveryReports:
    """See the module docstring; a ``CommitObserver`` of the writer."""

    def __init__(self, feed: ConditionFeed, *, backlog_warn_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._feed, self._warn, self._clock = feed, backlog_warn_s, clock
        self._runs: dict[str, dict[Stream, _Stream]] = {}  # by run: a frame judges its run only
        self._count = 0
        self._ids = itertools.count(1)
        self._full_warned = False

    # ------------------------------------------------------------ the endpoint's side

    def connect(self) -> int:
        """A new trainer connection; its id for ``reported`` and ``disconnected``."""
        return next(self._ids)

    def reported(self, connection: int, batch: Batch) -> None:
        """A decoded frame arrived (before its commit). Frames of several streams carry no
        backlog of one: only their steps are noted."""
        streams = {(r.run, r.rank, r.session) for r in batch.records}
        if len(streams) != 1:
            return
        (key,) = streams
        s = self._stream(key, connection)
        if s is None:
            return
        s.connection = connection
        steps = [r.step for r in batch.records if isinstance(r, Step)]
        s.step = max(steps) if steps else s.step
        if batch.backlog is not None:
            b = batch.backlog
            s.backlog, s.heard_at, s.left, s.progressed = b, self._clock(), b.records, False
            s.stored_up_to = max(s.stored_up_to, b.last_seq - b.records)
        if batch.dropped > s.dropped:
            s.dropped, s.dropped_at = batch.dropped, self._clock()
        self._judge(s.run)

    def disconnected(self, connection: int) -> None:
        """The connection ended: streams with nothing left are forgotten; the others stay
        (their records wait in the trainer's spool)."""
        runs = set()
        for s in self._all():
            if s.connection == connection:
                s.connection = None
                runs.add(s.run)
                if s.left == 0:
                    self._drop(s)
        for run in runs:
            self._judge(run)

    # ------------------------------------------------------------ the writer's side

    def committed(self, result: WriteResult) -> None:
        """What a commit stored shrinks the backlogs we know of."""
        runs = set()
        for key, top in result.top_seq.items():
            s = self._runs.get(key[0], {}).get(key)
            if s is None or top <= s.stored_up_to:
                continue
            s.stored_up_to, s.progressed = top, True
            if s.backlog is not None:
                s.left = max(0, s.backlog.last_seq - top)
            runs.add(s.run)
        for run in runs:
            self._judge(run)

    def failed(self, error: Exception) -> None:
        """A failed commit stores nothing: the backlogs stay as they are."""

    # ------------------------------------------------------------ the clock's side

    def tick(self) -> None:
        """Judge every run again: ages grow, and drops go quiet, while nothing arrives."""
        for run in list(self._runs):
            self._judge(run)

    def totals(self) -> Totals:
        now = self._clock()
        live = [s for s in self._all() if s.connection is not None]
        return Totals(len(live), sum(s.left for s in live),
                      sum(s.held() for s in live),
                      max((s.age(now) for s in live), default=0.0),
                      sum(s.dropped for s in live))

    # ------------------------------------------------------------ conditions

    def _all(self) -> list[_Stream]:
        # list() copies in C: safe to read from /metrics' thread while the loop changes them
        return [s for streams in list(self._runs.values()) for s in list(streams.values())]

    def _stream(self, key: Stream, connection: int) -> _Stream | None:
        s = self._runs.get(key[0], {}).get(key)
        if s is None:
            if self._count >= MAX_STREAMS:
                if not self._full_warned:
                    log.warning("delivery reports: tracking %d streams already; ignoring the "
                                "reports of new ones", MAX_STREAMS)
                    self._full_warned = True
                return None
            s = _Stream(run=key[0], rank=key[1], session=key[2], connection=connection)
            self._runs.setdefault(key[0], {})[key] = s
            self._count += 1
        return s

    def _drop(self, s: _Stream) -> None:
        streams = self._runs.get(s.run, {})
        if streams.pop((s.run, s.rank, s.session), None) is not None:
            self._count -= 1

    def _judge(self, run: str) -> None:
        streams = list(self._runs.get(run, {}).values())
        if not streams:
            self._runs.pop(run, None)
        step = max((s.step for s in streams if s.step is not None), default=None)
        self._judge_backlog(run, streams, step)
        self._judge_drops(run, streams, step)

    def _judge_backlog(self, run: str, streams: list[_Stream], step: int | None) -> None:
        now = self._clock()
        behind = sorted((s for s in streams if s.left > 0), key=lambda s: -s.age(now))
        over = [s for s in behind if s.age(now) >= self._warn or s.fill() >= FULL]
        is_open = self._feed.board.get("run", run, "spool_backlog") is not None
        if over or (is_open and any(s.age(now) >= self._warn / 2 or s.fill() >= NEARLY_FULL
                                    for s in behind)):
            worst = (over or behind)[0]
            severity: Severity = "critical" if any(s.fill() >= FULL for s in behind) \
                else "warning"
            self._feed.hold("run", run, "spool_backlog", _backlog_reading(
                worst, behind, severity, now, step))
        else:
            self._feed.clear("run", run, "spool_backlog", step)

    def _judge_drops(self, run: str, streams: list[_Stream], step: int | None) -> None:
        now = self._clock()
        dropping = sorted((s for s in streams if s.dropped and now - s.dropped_at < DROP_QUIET_S),
                          key=lambda s: -s.dropped)
        if not dropping:
            self._feed.clear("run", run, "records_dropped", step)
            return
        total = sum(s.dropped for s in dropping)
        ranks = tuple(s.rank for s in dropping)
        who = f"rank {ranks[0]}" if len(ranks) == 1 else f"ranks {', '.join(map(str, ranks))}"
        self._feed.hold("run", run, "records_dropped", Reading(
            "warning", f"{who} dropped {total:,} record(s) so far: the plugin's queue or spool "
            "was full; they are lost", {"dropped": total}, ranks, step))


def _backlog_reading(worst: _Stream, behind: list[_Stream], severity: Severity, now: float,
                     step: int | None) -> Reading:
    b = worst.backlog
    assert b is not None
    others = f" (and {len(behind) - 1} more rank(s))" if len(behind) > 1 else ""
    gone = "; its trainer has gone: they wait in its spool for `trainvitals sync`" \
        if worst.connection is None else ""
    spool = f"spool {mib(worst.held())}" + (f" of {mib(b.max_bytes)}" if b.max_bytes else "")
    full = "; records are dropped once it is full" if severity == "critical" else ""
    headline = (f"rank {worst.rank} has {worst.left:,} record(s) the server has not stored, "
                f"the oldest {duration(worst.age(now))} old ({spool}){others}{full}{gone}")
    facts: dict[str, float | int | str] = {
        "records": sum(s.left for s in behind), "oldest_age_s": round(worst.age(now), 1),
        "spool_fill": round(worst.fill(), 3), "connected": int(worst.connection is not None)}
    return Reading(severity, headline, facts, tuple(s.rank for s in behind), step)
