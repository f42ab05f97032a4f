"""Retention: keep the store bounded by run age and size, deleting whole runs, oldest first.

* ``retain_days``: a run whose latest record is older than this is deleted, whatever its
  status — a run silent for days is not running, whatever it last said;
* ``retain_bytes``: while the data takes more than this, the least recently updated finished
  (or crashed) run is deleted; running runs are never deleted for size.

A sweep runs on the writer's thread between commits (``Writer.run_exclusive``), so it never
interleaves with a write and the alert engine can forget the deleted runs safely.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from trainvitals.server.ingest.writer import Writer
from trainvitals.server.store import RunRow, Store

__all__ = ["Retention", "sweep"]

log = logging.getLogger("trainvitals.server")
DAY = 86_400.0


def sweep(store: Store, *, now: float, retain_days: float | None,
          retain_bytes: int | None, forget: Callable[[str], None] = lambda run: None
          ) -> list[str]:
    """Delete what the limits say must go; returns the deleted run names, oldest first.

    ``forget`` is told each deleted run (the alert engine drops its state for it).
    """
    runs = sorted(store.runs(), key=lambda r: (r.updated, r.id))  # least recently updated first
    doomed: list[RunRow] = []
    if retain_days is not None:
        cutoff = now - retain_days * DAY
        doomed = [r for r in runs if r.updated < cutoff]
    for run in doomed:
        _delete(store, run, forget)
    if retain_bytes is not None:
        gone = {r.id for r in doomed}
        for run in (r for r in runs if r.id not in gone and r.status != "running"):
            if store.size_bytes() <= retain_bytes:
                break
            _delete(store, run, forget)
            doomed.append(run)
    return [r.name for r in doomed]


def _delete(store: Store, run: RunRow, forget: Callable[[str], None]) -> None:
    store.delete_run(run.id)
    forget(run.name)


class Retention:
    """Runs ``sweep`` every ``interval`` seconds while the app runs (when a limit is set)."""

    def __init__(self, store: Store, writer: Writer, *,
                 retain_days: float | None, retain_bytes: int | None, interval: float) -> None:
        self._store, self._writer = store, writer
        self._days, self._bytes, self._interval = retain_days, retain_bytes, interval
        self._task: asyncio.Task[None] | None = None
        self.deleted: list[str] = []  # every run deleted since start, for tests and logs

    @property
    def enabled(self) -> bool:
        """Whether any limit is set."""
        return self._days is not None or self._bytes is not None

    async def start(self) -> None:
        """Start the periodic sweep (nothing to do without a limit)."""
        if self.enabled:
            self._task = asyncio.create_task(self._loop(), name="trainvitals-retention")

    async def stop(self) -> None:
        """Stop sweeping; a sweep in progress finishes on the writer thread first."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def sweep_now(self) -> list[str]:
        """One sweep, now; returns the deleted run names."""
        deleted: list[str] = await self._writer.run_exclusive(lambda: sweep(
            self._store, now=time.time(), retain_days=self._days, retain_bytes=self._bytes,
            forget=self._writer.forget))
        if deleted:
            log.info("retention: deleted %d run(s): %s", len(deleted), ", ".join(deleted))
            self.deleted.extend(deleted)
        return deleted

    async def _loop(self) -> None:
        while True:
            try:
                await self.sweep_now()
            except Exception:  # a failed sweep must not end retention; the next one retries
                log.exception("retention sweep failed")
            await asyncio.sleep(self._interval)
