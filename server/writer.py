"""The single writer: every record goes through one task that commits in batches.

Ingest connections ``submit()`` decoded records and get acknowledgements back through their
``reply`` callback once the records are committed. Between the commit and the acks, the alert
engine judges the new steps (in the same worker thread, so it needs no locks), alert changes
are saved, and live updates go to the hub and the sinks.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from trainvitals.protocol import Ack, Record, RunEnd, RunStart, Step
from trainvitals.server.alerts import AlertChange, AlertEngine
from trainvitals.server.hub import Hub
from trainvitals.server.series import step_values
from trainvitals.server.sinks import AlertSink
from trainvitals.server.store import Store, WriteResult
from trainvitals.server.wire_json import to_wire

__all__ = ["Writer"]

log = logging.getLogger("trainvitals.server")
Reply = Callable[[list[Ack]], None]


@dataclass
class _Job:
    records: Sequence[Record]
    reply: Reply


class Writer:
    """Owns the store's write side; see the module docstring."""

    def __init__(self, store: Store, engine: AlertEngine, hub: Hub, sinks: Sequence[AlertSink],
                 *, batch_records: int = 512, queue_jobs: int = 1024) -> None:
        self._store, self._engine, self._hub, self._sinks = store, engine, hub, sinks
        self._batch_records = batch_records
        self._queue: asyncio.Queue[_Job | None] = asyncio.Queue(maxsize=queue_jobs)
        # One thread: SQLite's writer connection and the engine's state live on it alone.
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="trainvitals-writer")
        self._task: asyncio.Task[None] | None = None
        self.committed = 0

    async def start(self) -> None:
        """Open the store, restore open alerts, start the writer task."""
        await self._call(self._store.open)
        open_alerts = await self._call(lambda: self._store.alerts(state="open"))
        self._engine.load_open(open_alerts)
        self._task = asyncio.create_task(self._run(), name="trainvitals-writer")

    async def stop(self) -> None:
        """Commit what is queued, then close the store."""
        if self._task is not None:
            await self._queue.put(None)
            await self._task
            self._task = None
        await self._call(self._store.close)
        self._thread.shutdown(wait=True)

    async def submit(self, records: Sequence[Record], reply: Reply) -> None:
        """Queue records for commit; waits only when the writer is far behind (backpressure)."""
        await self._queue.put(_Job(records, reply))

    async def _call(self, fn: Callable[[], Any]) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn)

    async def _run(self) -> None:
        while True:
            jobs, stop = await self._take()
            if jobs:
                await self._commit_isolated(jobs)
            if stop:
                return

    async def _commit_isolated(self, jobs: list[_Job]) -> None:
        """Commit jobs together; if that fails, one by one, so one bad frame costs only itself."""
        try:
            await self._commit(jobs)
            return
        except Exception:  # keep serving; what was not acked is not acked
            if len(jobs) == 1:
                log.exception("commit of %d record(s) failed", len(jobs[0].records))
                return
        for job in jobs:
            await self._commit_isolated([job])

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
        result, changes = await self._call(lambda: self._write(records))
        self.committed += len(result.accepted)
        self._publish(result)
        for sink in self._sinks:
            sink.deliver(changes)
        for job in jobs:
            job.reply(_acks(job.records, result))

    def _write(self, records: list[Record]) -> tuple[WriteResult, list[AlertChange]]:
        result = self._store.write(records)
        changes = [c for r in result.accepted if isinstance(r, Step)
                   for c in self._engine.observe(r)]
        if changes:
            self._store.save_alerts(c.alert for c in changes)
        return result, changes

    def _publish(self, result: WriteResult) -> None:
        steps: dict[str, list[dict[str, Any]]] = {}
        for r in result.accepted:
            if isinstance(r, Step):
                steps.setdefault(r.run, []).append(_step_update(r))
            elif isinstance(r, (RunStart, RunEnd)):
                status = "running" if isinstance(r, RunStart) else r.status
                self._hub.publish(None, {"type": "run", "run": r.run, "rank": r.rank,
                                         "run_id": result.run_ids.get(r.run), "status": status})
        for run, updates in steps.items():
            self._hub.publish(run, {"type": "steps", "run": run,
                                    "run_id": result.run_ids.get(run), "records": updates})


def _step_update(step: Step) -> dict[str, Any]:
    update: dict[str, Any] = to_wire({"rank": step.rank, "step": step.step, "time": step.time,
                                      "values": step_values(step), "clip": step.clip})
    return update


def _acks(records: Sequence[Record], result: WriteResult) -> list[Ack]:
    streams = {(r.run, r.rank, r.session) for r in records}
    return [Ack(run=run, rank=rank, session=session, seq=result.top_seq[(run, rank, session)])
            for run, rank, session in streams]
