"""The single writer: every record goes through one task that commits in batches.

Ingest connections ``submit()`` decoded records and get acknowledgements back through their
``reply`` callback once the records are committed — or an ``Error`` through ``fail`` when they
could not be: code ``limit_exceeded`` (fatal: a server limit refuses them) or ``unavailable``
(the commit failed, e.g. disk full, or free space is below the floor and it was not tried:
``ingest.storage``; the sender should send them again later). Either way nothing of that
frame is stored. Between the commit and the acks, the alert engine judges the new steps and
the incident engine groups the alert changes into incidents (in the same worker thread, so
neither needs locks); both are saved, and live updates go to the hub and the sinks.
Observers (readiness, delivery reports) hear of every commit and every failure.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

from trainvitals.protocol import Ack, Error, Record, RunEnd, RunStart, Step
from trainvitals.protocol.errors import UNAVAILABLE
from trainvitals.protocol.series import StepValues
from trainvitals.protocol.wire_json import to_wire
from trainvitals.server.alerts import AlertChange, AlertEngine
from trainvitals.server.alerts.incidents import IncidentChange, IncidentEngine
from trainvitals.server.ingest.storage import (
    WHAT_TO_DO,
    BelowFloor,
    FreeSpace,
    is_disk_full,
    mib,
)
from trainvitals.server.live.hub import Hub
from trainvitals.server.live.progress import ProgressFeed
from trainvitals.server.notify.sinks import AlertSink
from trainvitals.server.store import Store, WriteResult
from trainvitals.server.store.limits import LimitExceeded

__all__ = ["CommitObserver", "Writer"]

log = logging.getLogger("trainvitals.server")
Reply = Callable[[list[Ack]], None]
Fail = Callable[[Error], None]


class CommitObserver(Protocol):
    """Told, on the event loop, how each commit went."""

    def committed(self, result: WriteResult) -> None:
        """A commit succeeded (or the readiness probe did: ``result`` is then empty)."""

    def failed(self, error: Exception) -> None:
        """A commit failed, or (``BelowFloor``) was not tried; nothing of it was stored."""


@dataclass
class _Job:
    records: Sequence[Record]
    reply: Reply
    fail: Fail | None = None
    values: Sequence[dict[str, float] | None] | None = None  # by record, from the decoder


class _Values:
    """``StepValues``, told beforehand what the decoder found (``decode_binary_values``: the
    very dict ``step_values`` gives, built from the frame's columns); derives the rest."""

    __slots__ = ("_derive", "_known")

    def __init__(self, jobs: Sequence[_Job]) -> None:
        self._derive = StepValues()
        self._known: dict[int, tuple[Step, dict[str, float]]] = {}
        for job in jobs:
            if job.values is not None:
                for record, values in zip(job.records, job.values, strict=True):
                    if values is not None and isinstance(record, Step):
                        self._known[id(record)] = (record, values)

    def __call__(self, step: Step) -> dict[str, float]:
        hit = self._known.get(id(step))
        if hit is not None and hit[0] is step:
            return hit[1]
        return self._derive(step)


class Writer:
    """Owns the store's write side; see the module docstring."""

    def __init__(self, store: Store, engine: AlertEngine, hub: Hub, sinks: Sequence[AlertSink],
                 *, incidents: IncidentEngine | None = None, batch_records: int = 512,
                 queue_jobs: int = 1024, space: FreeSpace | None = None) -> None:
        self._store, self._engine, self._hub, self._sinks = store, engine, hub, sinks
        self._space = space  # the free-space floor (SQLite); None: no floor
        self.observers: list[CommitObserver] = []
        self.incidents = incidents if incidents is not None else IncidentEngine()
        self._progress = ProgressFeed(hub)  # throttled last step/speed of every run, for all
        self._batch_records = batch_records
        self._queue: asyncio.Queue[_Job | None] = asyncio.Queue(maxsize=queue_jobs)
        # One thread: SQLite's writer connection and the engine's state live on it alone.
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="trainvitals-writer")
        self._task: asyncio.Task[None] | None = None
        self.committed = 0
        self.committed_values = 0  # series values in committed steps (for /metrics)
        # incident changes by (change, severity): opened, escalated, resolved (for /metrics)
        self.incident_changes: Counter[tuple[str, str]] = Counter()
        self._adopted: set[str] = set()  # runs whose stored open alerts the engine holds
        self.failed_commits = 0  # commits (or probes) that raised (for /metrics)
        self.incident_errors = 0  # steps whose alerts the incident engine could not group
        self.refused: Counter[str] = Counter()  # frames refused, by reason (for /metrics)
        self.last_failure = ""  # why the latest commit failed; "" when it succeeded
        self._failure_is_news = True  # no failure was logged since the last commit succeeded

    async def start(self) -> None:
        """Open the store, restore open alerts and incidents, start the writer task."""
        await self._call(self._store.open)
        open_alerts = await self._call(lambda: self._store.alerts(state="open"))
        self._engine.load_open(open_alerts)
        for run in {alert.run for alert in open_alerts}:
            await self._call(functools.partial(self._adopt_incidents, run))
        self._adopted.update(alert.run for alert in open_alerts)
        self._task = asyncio.create_task(self._run(), name="trainvitals-writer")

    async def stop(self) -> None:
        """Commit what is queued, then close the store."""
        if self._task is not None:
            await self._queue.put(None)
            await self._task
            self._task = None
        self._progress.close()
        await self._call(self._store.close)
        self._thread.shutdown(wait=True)

    async def submit(self, records: Sequence[Record], reply: Reply,
                     fail: Fail | None = None, *,
                     values: Sequence[dict[str, float] | None] | None = None) -> None:
        """Queue records for commit; waits only when the writer is far behind (backpressure).

        ``reply`` gets the acks once they are committed; ``fail`` the error if they cannot be.
        ``values``: each record's ``step_values`` where the decoder has them already (None:
        not known), so that nobody derives them again.
        """
        await self._queue.put(_Job(records, reply, fail, values))

    async def run_exclusive(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on the writer's thread between commits (store maintenance such as
        retention, which must not interleave with a write) and return its result."""
        return await self._call(fn)

    async def _call(self, fn: Callable[[], Any]) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn)

    async def _run(self) -> None:
        while True:
            jobs, stop = await self._take()
            if jobs:
                await self._commit_isolated(jobs)
            if stop:
                return

    async def probe(self) -> bool:
        """Commit the smallest write there is (``Store.probe``) between commits: whether
        storing works again after a failed commit, when no trainer sends anything."""
        try:
            await self._call(self._probe)
        except Exception as exc:
            self._failed(exc)
            return False
        self._succeeded(WriteResult([], {}, {}))
        return True

    def _probe(self) -> None:
        if self._space is not None:
            self._space.check()
        self._store.probe()

    async def _commit_isolated(self, jobs: list[_Job]) -> None:
        """Commit jobs together; if that fails, one by one, so one bad frame costs only itself
        (a full disk or the floor costs every frame alike: they are refused together)."""
        try:
            await self._commit(jobs)
            return
        except Exception as exc:  # keep serving; what was not acked is not acked
            self._failed(exc)
            if len(jobs) == 1 or isinstance(exc, BelowFloor) or is_disk_full(exc):
                for job in jobs:
                    self._refuse(job, exc)
                return
        for job in jobs:
            await self._commit_isolated([job])

    def _succeeded(self, result: WriteResult) -> None:
        self.last_failure = ""
        for observer in self.observers:
            observer.committed(result)

    def _failed(self, exc: Exception) -> None:
        if not isinstance(exc, (BelowFloor, LimitExceeded)):
            self.failed_commits += 1
            self.last_failure = f"{type(exc).__name__}: {exc}"
        for observer in self.observers:
            observer.failed(exc)

    def _refuse(self, job: _Job, exc: Exception) -> None:
        """Tell the sender that nothing of its frame was stored, and why."""
        if isinstance(exc, LimitExceeded):
            self.refused["limit_exceeded"] += 1
            log.warning("refused %d record(s): %s", len(job.records), exc)
            error = Error(code=exc.code, message=str(exc), fatal=True)
        elif isinstance(exc, BelowFloor):  # a condition says it, once; not a line per frame
            self.refused["storage_floor"] += 1
            log.debug("refused %d record(s): %s", len(job.records), exc)
            error = Error(code=UNAVAILABLE, fatal=False, message=str(exc)[:500])
        else:
            self.refused["commit_failed"] += 1
            # The first failure of a series with its traceback; the rest only at debug level:
            # the commits_failing / storage_full condition says it once, /metrics counts it.
            first, self._failure_is_news = self._failure_is_news, False
            log.log(logging.ERROR if first else logging.DEBUG, "commit of %d record(s) failed",
                    len(job.records), exc_info=exc if first else None)
            error = Error(code=UNAVAILABLE, fatal=False, message=self._failure_text(exc)[:500])
        if job.fail is not None:
            job.fail(error)

    def _failure_text(self, exc: Exception) -> str:
        cause = f"{type(exc).__name__}: {exc}"
        if not is_disk_full(exc):
            return (f"the server could not store this frame ({cause}); nothing of it was "
                    "stored; send it again later")
        space = self._space.measure() if self._space is not None else None
        free = f"; {mib(space.free)} free on {space.path}" if space and space.free >= 0 else ""
        return (f"storage full: the server could not store this frame ({cause}{free}); "
                f"nothing of it was stored; send it again later — {WHAT_TO_DO}")

    async def _take(self) -> tuple[list[_Job], bool]:
        first = await self._queue.get()
        if first is None:
            return [], True
        jobs, size = [first], len(first.records)
        while size < self._batch_records and not self._queue.empty():
            job = self._queue.get_nowait()
            if job is None:
                return jobs, True
            jobs.append(job)
            size += len(job.records)
        return jobs, False

    async def _commit(self, jobs: list[_Job]) -> None:
        records = [r for job in jobs for r in job.records]
        values_of = _Values(jobs)  # derived once; the store, the rules and the hub share them
        result, changes, incidents = await self._call(lambda: self._write(records, values_of))
        self._failure_is_news = True  # the next failure is news again: log it in full
        self._succeeded(result)
        self.committed += len(result.accepted)
        self.committed_values += sum(len(values_of(r)) for r in result.accepted
                                     if isinstance(r, Step))
        self._publish(result, values_of)
        self.incident_changes.update((c.kind, c.incident.severity) for c in incidents
                                     if c.kind != "updated")
        for sink in self._sinks:
            sink.deliver(changes, incidents)
        for job in jobs:
            job.reply(_acks(job.records, result))

    def _write(self, records: list[Record], values_of: _Values
               ) -> tuple[WriteResult, list[AlertChange], list[IncidentChange]]:
        if self._space is not None:
            self._space.check()  # below the floor: refuse before writing anything
        result = self._store.write(records, values_of)
        self._adopt({r.run for r in result.accepted if isinstance(r, Step)})
        changes: list[AlertChange] = []
        incidents: list[IncidentChange] = []
        for r in result.accepted:
            if isinstance(r, Step):
                found = self._engine.observe(r, values_of(r))
                changes += found
                incidents += self._incidents_of(r, found)
        if changes:
            self._store.save_alerts(c.alert for c in changes)
        if incidents:  # the latest snapshot of each changed incident
            latest = {c.incident.key: c.incident for c in incidents}
            self._store.save_incidents(latest.values())
        return result, changes, incidents

    def _incidents_of(self, step: Step, found: list[AlertChange]) -> list[IncidentChange]:
        """The incident engine's changes for ``step``; never raises: the records are stored
        by now, and a failure to group their alerts must not be reported as a failed commit
        (the alerts are saved and sent all the same)."""
        try:
            return self.incidents.observe(step, found)
        except Exception:
            self.incident_errors += 1
            if self.incident_errors <= 10:
                log.exception("grouping the alerts of run %r step %d into incidents failed",
                              step.run, step.step)
            return []

    def _adopt(self, runs: set[str]) -> None:
        """Load the open alerts of runs new to this writer before judging their steps.

        At start the engine loads every open alert; a run that arrives later may still have
        some: another replica on the same database raised them before its trainer failed over
        to this one. Without them an alert still holding would be announced as opened twice.
        """
        for run in runs - self._adopted:
            self._engine.load_open(self._store.alerts(run=run, state="open"))
            self._adopt_incidents(run)
            self._adopted.add(run)

    def _adopt_incidents(self, run: str) -> None:
        """Continue ``run``'s open incidents and number new ones after the stored."""
        stored = self._store.incidents(run=run)
        self.incidents.note_numbered(run, max((i.number for i in stored), default=0))
        self.incidents.load_open(i for i in stored if i.state != "resolved")

    @property
    def rule_errors(self) -> dict[str, int]:
        """How often each alert rule raised (it found nothing those steps; see the log)."""
        return dict(self._engine.rule_errors)

    def forget(self, run: str) -> None:
        """Drop the engine's state of a deleted run, which starts afresh if it comes back
        (on the writer's thread: ``run_exclusive``)."""
        self._engine.forget(run)
        self.incidents.forget(run)
        self._adopted.discard(run)

    def _publish(self, result: WriteResult, values_of: _Values) -> None:
        steps: dict[str, list[dict[str, Any]]] = {}
        for r in result.accepted:
            if isinstance(r, Step):
                steps.setdefault(r.run, []).append(_step_update(r, values_of(r)))
            elif isinstance(r, (RunStart, RunEnd)):
                status = "running" if isinstance(r, RunStart) else r.status
                self._hub.publish(None, {"type": "run", "run": r.run, "rank": r.rank,
                                         "run_id": result.run_ids.get(r.run), "status": status})
        for run, updates in steps.items():
            self._hub.publish(run, {"type": "steps", "run": run,
                                    "run_id": result.run_ids.get(run), "records": updates})
            self._progress.note(run, result.run_ids.get(run), updates)


def _step_update(step: Step, values: dict[str, float]) -> dict[str, Any]:
    # The values as to_wire gives them; when they are all finite (their sum is: NaN and ±Inf
    # propagate, an overflow only sends them the long way) that is a plain copy.
    total = sum(values.values())
    wire = dict(values) if total - total == 0.0 else to_wire(values)
    return {"rank": step.rank, "step": step.step, "time": to_wire(step.time), "values": wire,
            "clip": to_wire(step.clip)}


def _acks(records: Sequence[Record], result: WriteResult) -> list[Ack]:
    """One ack per stream of the frame whose contiguous high-water mark exists."""
    streams = {(r.run, r.rank, r.session) for r in records}
    return [Ack(run=run, rank=rank, session=session, seq=result.top_seq[(run, rank, session)])
            for run, rank, session in streams if (run, rank, session) in result.top_seq]
