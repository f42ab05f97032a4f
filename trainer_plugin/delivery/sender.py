"""Everything between ``Monitor``'s calls and the server, off the training thread.

Training threads only ``submit()``: a non-blocking put into a bounded queue (when it is full
the item is dropped and counted — the step never waits). Two daemon threads do the rest:

* the **collector** takes items from the queue (all that are waiting, at once), builds records
  (waiting for device values is fine here), and appends them to the stream's ``Spool`` in one
  write; the spool numbers, validates and keeps them. It never touches the network, so a slow
  or absent server never fills the queue.
* the **sender** (``Link``) delivers the spool to the server and resends what was not
  acknowledged. Without a server (offline mode) there is no sender: the spool is the result,
  uploaded later with ``trainvitals sync``.

``close()`` waits a bounded time for the server's acks, then says what, if anything, stayed
in the spool, why (the server's last error, when it refused them), and how to send it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from websockets.sync.client import ClientConnection, connect

from trainvitals.protocol import Record, RunEnd, RunStart
from trainvitals.protocol.transport import DEFAULT_MAX_MESSAGE_BYTES
from trainvitals.trainer_plugin.delivery.link import DeliveryStats, Link, Stream
from trainvitals.trainer_plugin.delivery.spool import Spool, SpoolRefused, stream_stem

__all__ = ["DeliveryStats", "Sender", "Submittable", "default_spool_dir", "make_sender"]

log = logging.getLogger("trainvitals")
_STOP = object()
COLLECT_GRACE = 2.0  # seconds close() always allows the collector to spool what is queued
COLLECT_BATCH = 256  # items the collector takes from the queue at once


class Submittable(Protocol):
    """A record, or something that becomes one once its device values reach the host."""

    def build(self) -> Record: ...


class Sender:
    """Collects, spools and delivers one stream's records; see the module docstring.

    ``url=None`` is offline mode (spool only); ``spool_dir=None`` keeps the spool in memory.
    """

    def __init__(
        self, url: str | None, token: str | None, stream: Stream, *,
        spool_dir: Path | None, spool_bytes: int = 256 << 20, queue_size: int = 10_000,
        batch_size: int = 256, max_frame_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        idle_poll: float = 0.05, connect: Callable[..., ClientConnection] = connect,
    ) -> None:
        self.url, self.stream = url, stream
        self.spool = Spool(spool_dir, stream_stem(*stream), max_bytes=spool_bytes,
                           max_record_bytes=max_frame_bytes)
        self._queue: queue.Queue[object] = queue.Queue(maxsize=queue_size)
        self._stats = DeliveryStats(spool=str(spool_dir or ""))
        self._changed = threading.Condition()
        self._taken = 0  # items the collector has finished with (kept or dropped)
        self._refusals: set[str] = set()
        self._collector = threading.Thread(target=self._collect, name="trainvitals-collector",
                                           daemon=True)
        self._collector.start()
        self.link: Link | None = None
        if url is not None:
            self.link = Link(url, token, self.spool, stream, self._stats, self._changed,
                             batch_size=batch_size, max_frame_bytes=max_frame_bytes,
                             idle_poll=idle_poll, connect=connect)
            self._link_thread = threading.Thread(target=self.link.run,
                                                 name="trainvitals-sender", daemon=True)
            self._link_thread.start()

    # ------------------------------------------------------------ training-thread side

    def submit(self, item: Submittable | Record) -> bool:
        """Queue ``item`` without blocking; False (and counted) when the queue is full.

        Run start and end records wait up to a few seconds for room instead (they come once,
        outside the training loop, and without them the run's status would be wrong).
        """
        try:
            if isinstance(item, (RunStart, RunEnd)):
                self._queue.put(item, timeout=5.0)
            else:
                self._queue.put_nowait(item)
        except queue.Full:
            self._dropped("queue full: the collector thread cannot keep up")
            return False
        with self._changed:
            self._stats.submitted += 1
        return True

    @property
    def connected(self) -> bool:
        """Whether a connection to the server is open now (a lock-free read)."""
        return self.link is not None and self.link.connected

    # ------------------------------------------------------------ any thread

    def stats(self) -> DeliveryStats:
        """A snapshot of the delivery counters."""
        with self._changed:
            snapshot = self._stats.copy()
        snapshot.pending = self.spool.pending
        return snapshot

    def flush(self, timeout: float) -> bool:
        """Wait until every submitted record is kept and (with a server) acknowledged."""
        end = time.monotonic() + timeout
        with self._changed:
            while not self._settled():
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(min(left, 0.05))  # acks notify; the collector may not
        return True

    def _settled(self) -> bool:
        collected = self._taken >= self._stats.submitted
        return collected and (self.link is None or self.spool.pending == 0)

    def close(self, timeout: float) -> DeliveryStats:
        """Deliver within ``timeout`` seconds, stop, and report. Collecting what is queued is
        local work (milliseconds), allowed ``COLLECT_GRACE`` seconds even when ``timeout`` is
        shorter; stopping the sender takes at most one more second."""
        end = time.monotonic() + timeout
        with contextlib.suppress(queue.Full):  # a full queue: the collector is far behind
            self._queue.put(_STOP, timeout=max(timeout, COLLECT_GRACE))
        self._collector.join(max(end - time.monotonic(), COLLECT_GRACE))
        self.flush(max(0.0, end - time.monotonic()))
        if self.link is not None:
            self.link.stop.set()
            with self._changed:  # an idle link waits on it
                self._changed.notify_all()
            self._link_thread.join(1.0)
        kept = self.spool.close()
        stats = self.stats()
        self._report(stats, kept, timeout)
        return stats

    # ------------------------------------------------------------ collector thread

    def _collect(self) -> None:
        while True:
            batch = self._take()
            stop = next((i for i, item in enumerate(batch) if item is _STOP), None)
            items = batch if stop is None else batch[:stop]
            try:
                self._keep(items)
            except Exception:  # a bug here must not take the training process down
                log.exception("trainvitals: could not keep records; dropping them")
                for _ in items:
                    self._dropped("internal error")
            with self._changed:
                self._taken += len(items)
                self._changed.notify_all()
            if stop is not None:
                return

    def _take(self) -> list[object]:
        """The next item (waiting for it), and whatever else is queued, up to a batch: it is
        spooled with one file write, and the GIL changes hands once for all of it."""
        batch = [self._queue.get()]
        while len(batch) < COLLECT_BATCH:
            try:
                batch.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return batch

    def _keep(self, items: list[object]) -> None:
        records: list[Record] = []
        for item in items:
            try:
                records.append(item.build() if hasattr(item, "build") else item)  # type: ignore[arg-type]
            except Exception:
                log.exception("trainvitals: could not read a step's values; dropping that step")
                self._dropped("")
        kept = self.spool.append_many([(r, isinstance(r, (RunStart, RunEnd))) for r in records])
        with self._changed:  # wakes an idle link at once (it waits here when nothing is in flight)
            self._changed.notify_all()
        for outcome in kept:
            if isinstance(outcome, SpoolRefused):
                self._dropped(str(outcome))

    def _dropped(self, reason: str) -> None:
        with self._changed:
            self._stats.dropped += 1
            first = reason not in self._refusals
            self._refusals.add(reason)
            self._changed.notify_all()
        if first and reason:  # one line per kind of loss; the count goes with the run
            log.warning("trainvitals: dropping records of run %r: %s (the count is reported "
                        "with the run)", self.stream[0], reason)

    # ------------------------------------------------------------ the last word

    def _report(self, stats: DeliveryStats, kept: list[Path], timeout: float) -> None:
        """Say what stayed behind and how to send it (a warning: people must see it)."""
        run = self.stream[0]
        if stats.dropped:
            log.warning("trainvitals: %d record(s) of run %r were dropped (%s)", stats.dropped,
                        run, "; ".join(sorted(r for r in self._refusals if r)) or "see above")
        if not stats.pending:
            return
        if not kept:
            log.warning("trainvitals: %d record(s) of run %r were not delivered and are lost "
                        "(the spool was kept in memory)", stats.pending, run)
            return
        where = self.spool.directory
        server = ",".join(u.removesuffix("/ws/ingest") for u in (self.url or "").split(",")
                          if u) or "ws://HOST:PORT"
        # Why: the server's own word when it refused them (its disk is full, ...), else what
        # kept us from it (cannot connect, connection lost).
        cause = (f"the server's last error: {stats.server_error}" if stats.server_error
                 else stats.last_error)
        why = ("recorded offline" if self.url is None else
               f"not acknowledged by {server} within {timeout:g} s"
               + (f" ({cause})" if cause else ""))
        log.warning("trainvitals: %d record(s) of run %r %s are kept in %s; send them with: "
                    "trainvitals sync %s --server %s", stats.pending, run, why, where, where,
                    server)


def make_sender(url: str | None, token: str | None, stream: Stream, *,
                spool: str | os.PathLike[str] | None, spool_bytes: int,
                queue_size: int) -> Sender | None:
    """The sender a ``Monitor`` asked for: ``spool=""`` is the default directory, ``None``
    memory only; no server and no spool file means nothing to do (``None``)."""
    spool_dir = default_spool_dir() if spool == "" else None if spool is None else Path(spool)
    if url is None and spool_dir is None:
        return None
    return Sender(url, token, stream, spool_dir=spool_dir, spool_bytes=spool_bytes,
                  queue_size=queue_size)


def default_spool_dir() -> Path:
    """``$TRAINVITALS_SPOOL``, else ``$XDG_CACHE_HOME/trainvitals/spool`` (``~/.cache/…``)."""
    if os.environ.get("TRAINVITALS_SPOOL"):
        return Path(os.environ["TRAINVITALS_SPOOL"])
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "trainvitals" / "spool"
