"""Readiness: whether this server can store now, and the server-wide conditions that say why not.

``/healthz`` says the process is up; ``/readyz`` says it can do its job. The checks:

========  ==========================================  ============================================
check     ready when                                  measured
========  ==========================================  ============================================
commit    the latest commit (or probe) succeeded      by the writer, on every commit; while the
                                                      latest failed, a probe every interval
disk      free space is above the floor (SQLite)      before every commit, and every interval
database  a read answers within ``PING_TIMEOUT``      every interval
relay     LISTEN is up and the last NOTIFY went out   every interval (PostgreSQL only)
========  ==========================================  ============================================

The same measurements open and resolve the server's conditions (``alerts.conditions``):
``storage_full`` (a warning below twice the floor, critical once frames are refused below it
or a commit fails because the disk is full), ``database_unreachable``, ``commits_failing``
(another commit error) and ``replica_lagging``. docs/operations.md has the table with every
threshold. Everything here runs on the event loop; the probes run on threads.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from trainvitals.server.alerts.conditions import Reading
from trainvitals.server.ingest.storage import WHAT_TO_DO, BelowFloor, FreeSpace, Space, is_disk_full
from trainvitals.server.ingest.writer import Writer
from trainvitals.server.notify.conditions import ConditionFeed
from trainvitals.server.store import Store, WriteResult
from trainvitals.server.store.limits import LimitExceeded

if TYPE_CHECKING:  # psycopg: only where PostgreSQL is configured
    from trainvitals.server.live.relay import RelayHealth

__all__ = ["PING_TIMEOUT", "Check", "Readiness"]

log = logging.getLogger("trainvitals.server")
PING_TIMEOUT = 5.0  # seconds a database read (or a probe commit) may take before it fails
LAGGING, CAUGHT_UP = 0.5, 0.25  # the relay's outgoing queue: lagging when this full, until under


@dataclass(frozen=True)
class Check:
    """One readiness check: ``ok``, and what it found, for people."""

    ok: bool
    detail: str


class Readiness:
    """The checks and the server conditions; a ``CommitObserver`` of the writer."""

    def __init__(self, writer: Writer, store: Store, feed: ConditionFeed, *,
                 space: FreeSpace | None, relay: Callable[[], RelayHealth] | None,
                 interval: float, ticks: Sequence[Callable[[], None]] = ()) -> None:
        self._writer, self._store, self._feed = writer, store, feed
        self._space, self._relay, self._interval = space, relay, interval
        self._ticks = list(ticks)  # also run every interval (delivery reports age)
        self._commit = ""  # why the latest commit failed ("" when it succeeded)
        self._commit_disk_full = False
        self._database = ""  # why the latest read failed
        self._relay_health: RelayHealth | None = None
        self._lagging = False
        self._task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Measure once (so the first /readyz is right), then every ``interval``."""
        await self.check_now()
        self._task = asyncio.create_task(self._loop(), name="trainvitals-readiness")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.check_now()
            except Exception:  # a failed round must not end the checks; the next one retries
                log.exception("readiness check failed")

    async def check_now(self) -> None:
        """One round: free space, a database read, a probe commit if the last one failed,
        the relay; then the conditions."""
        if self._space is not None:
            await asyncio.to_thread(self._space.measure)
        self._database = await _within(asyncio.to_thread(self._store.ping), "a database read")
        if self._commit:
            await _within(self._writer.probe(), "a probe commit")  # tells us as an observer
        self._relay_health = self._relay() if self._relay is not None else None
        for tick in self._ticks:
            tick()
        self._judge()

    # ------------------------------------------------------------ the writer's side

    def committed(self, result: WriteResult) -> None:
        if self._commit:
            log.info("commits succeed again")
        self._commit, self._commit_disk_full = "", False
        self._judge()

    def failed(self, error: Exception) -> None:
        if isinstance(error, LimitExceeded):  # the records' fault, not the server's
            return
        if not isinstance(error, BelowFloor):
            self._commit = f"{type(error).__name__}: {error}"
            self._commit_disk_full = is_disk_full(error)
        self._judge()

    # ------------------------------------------------------------ what /readyz says

    def checks(self) -> dict[str, Check]:
        """Every check that applies here, in the order their failures are reported."""
        found: dict[str, Check] = {}
        space = self._space.last if self._space is not None else None
        if self._space is not None:
            found["disk"] = _disk_check(space)
        found["database"] = Check(not self._database, self._database or "answers")
        found["commit"] = Check(not self._commit, (
            f"the latest commit failed ({self._commit}); nothing is stored until one succeeds"
            if self._commit else "the latest commit succeeded"))
        if self._relay is not None:
            found["relay"] = _relay_check(self._relay_health)
        return found

    def status(self) -> tuple[bool, str, dict[str, Check]]:
        """``(ready, reason, checks)``; the reason names the first failing check."""
        checks = self.checks()
        failing = [f"{name}: {c.detail}" for name, c in checks.items() if not c.ok]
        return not failing, "; ".join(failing), checks

    # ------------------------------------------------------------ conditions

    def _judge(self) -> None:
        space = self._space.last if self._space is not None else None
        self._judge_storage(space)
        unusable = space is not None and space.level == "unknown"
        if self._database or unusable:
            reason = self._database or (space.describe() if space else "")
            self._feed.hold("server", "", "database_unreachable", Reading(
                "critical", f"the database cannot be reached: {reason}; nothing can be "
                "stored or read", {"error": reason}))
        else:
            self._feed.clear("server", "", "database_unreachable")
        if self._commit and not self._commit_disk_full:
            self._feed.hold("server", "", "commits_failing", Reading(
                "critical", f"commits fail ({self._commit}): new records are refused; "
                "trainers keep them and send them again", {"error": self._commit}))
        else:
            self._feed.clear("server", "", "commits_failing")
        self._judge_relay()

    def _judge_storage(self, space: Space | None) -> None:
        where = space.describe() if space is not None and space.level != "unknown" else ""
        facts: dict[str, float | int | str] = {} if not where or space is None else {
            "free_bytes": space.free, "total_bytes": space.total, "floor_bytes": space.floor,
            "path": space.path}
        if self._commit and self._commit_disk_full:
            self._feed.hold("server", "", "storage_full", Reading(
                "critical", f"storage full: commits fail ({self._commit})"
                + (f"; {where}" if where else "") + f" — {WHAT_TO_DO}", facts))
        elif space is not None and space.level == "refusing":
            self._feed.hold("server", "", "storage_full", Reading(
                "critical", f"storage full: new records are refused (trainers keep them): "
                f"{where}", facts))
        elif space is not None and space.level == "low":
            self._feed.hold("server", "", "storage_full", Reading(
                "warning", f"disk nearly full: new records are refused below the floor: "
                f"{where}", facts))
        else:
            self._feed.clear("server", "", "storage_full")

    def _judge_relay(self) -> None:
        health = self._relay_health
        if health is None:
            return
        share = health.queued / health.capacity if health.capacity else 0.0
        self._lagging = share >= (CAUGHT_UP if self._lagging else LAGGING)
        if health.listening and health.sending and not self._lagging:
            self._feed.clear("server", "", "replica_lagging")
            return
        problem = health.problem or (f"{health.queued:,} live messages wait for the other "
                                     f"replicas (of {health.capacity:,})")
        self._feed.hold("server", "", "replica_lagging", Reading(
            "warning", f"the replica relay lags: {problem}; browsers on other replicas miss "
            "this one's updates until it catches up", {
                "queued": health.queued, "listening": int(health.listening),
                "sending": int(health.sending)}))


def _disk_check(space: Space | None) -> Check:
    if space is None:
        return Check(True, "not measured yet")
    if space.level == "unknown":
        return Check(False, space.describe())
    if space.level == "refusing":
        return Check(False, f"{space.describe()}: new records are refused — {WHAT_TO_DO}")
    return Check(True, space.describe())


def _relay_check(health: RelayHealth | None) -> Check:
    if health is None:
        return Check(True, "not measured yet")
    if not (health.listening and health.sending):
        return Check(False, health.problem or "the relay is reconnecting")
    return Check(True, f"listening; {health.queued:,} message(s) waiting")


async def _within(work: Awaitable[Any], what: str) -> str:
    """Await ``work`` for at most ``PING_TIMEOUT`` seconds; "" if it succeeded, else why not."""
    try:
        await asyncio.wait_for(work, PING_TIMEOUT)
    except asyncio.TimeoutError:
        return f"{what} did not answer within {PING_TIMEOUT:g} s"
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return ""

