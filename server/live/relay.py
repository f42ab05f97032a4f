"""Live fan-out across server replicas that share one PostgreSQL database (LISTEN/NOTIFY).

Every message a replica's ``Hub`` publishes (``steps``, ``run``, ``progress``, ``alert``) is sent
as a NOTIFY on channel ``trainvitals_live``; every replica LISTENs there and queues the messages
of the *other* replicas for its own viewers with ``Hub.deliver``, which never relays them again.
Each replica has a random id, carried in every payload; its own notifications come back to it
and are skipped. Only the hub is relayed, so browsers everywhere see each alert change once,
while the terminal log and the webhooks fire only on the replica whose alert engine raised it.

Policies:

* **Size.** A NOTIFY payload must be under 8000 bytes. ``steps`` messages are cut between
  records so each piece fits. A piece still too big (one record with many series), or any other
  message too big, is inserted into the unlogged table ``trainvitals_relay`` and only its row id
  is notified; the readers fetch the row. Rows older than ``spill_ttl`` seconds are deleted; a
  replica that finds a row already gone (it was that far behind) tells its viewers to resync.
* **Backpressure.** Publishing never waits: outgoing messages go through a bounded queue
  (``queue_size``) that one task drains, a batch per transaction. When the queue is full the
  message is dropped and the next batch begins with a ``resync`` for the other replicas'
  viewers (their pages reload from REST). A failed send (connection lost) is handled the same
  way: the batch is dropped, the connection reopened with backoff, the others told to resync.
* **Lost LISTEN connection.** It is reopened with backoff; once listening again the relay sends
  this replica's viewers a ``resync``, since messages may have been missed meanwhile.

Order: one replica's messages reach every other replica in the order they were published.
Both connections are asynchronous (psycopg 3, autocommit) on the server's event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from trainvitals.server.live import relay_wire as wire
from trainvitals.server.live.hub import Hub

__all__ = ["CHANNEL", "RelayHealth", "RelayStats", "ReplicaRelay"]

log = logging.getLogger("trainvitals.server")
CHANNEL = "trainvitals_live"
SPILL_TABLE = """CREATE UNLOGGED TABLE IF NOT EXISTS trainvitals_relay (
    id bigserial PRIMARY KEY, sent_at timestamptz NOT NULL DEFAULT now(), body text NOT NULL)"""
Connection = psycopg.AsyncConnection[Any]
Item = tuple[str | None, dict[str, Any]]
_STOP: Item = (None, {})


@dataclass
class RelayStats:
    """Counters: messages relayed out, received from others, spilled, dropped (queue full or
    a failed send), resyncs this replica asked the others for, LISTEN reconnects."""

    sent: int = 0
    received: int = 0
    spilled: int = 0
    dropped: int = 0
    resyncs_sent: int = 0
    reconnects: int = 0


@dataclass(frozen=True)
class RelayHealth:
    """Whether the relay keeps up now: its LISTEN connection is up, its last NOTIFY went out,
    and how many live messages wait for the other replicas (of ``capacity``). ``problem``:
    the latest failure while one holds, else ``""``."""

    listening: bool
    sending: bool
    queued: int
    capacity: int
    problem: str = ""


def _backoff(initial: float = 0.1, cap: float = 5.0) -> Iterator[float]:
    delay = initial
    while True:
        yield delay
        delay = min(delay * 2, cap)


class ReplicaRelay:
    """Relays one hub to and from the other replicas on ``url``; see the module docstring."""

    def __init__(self, url: str, hub: Hub, *, channel: str = CHANNEL, queue_size: int = 4096,
                 batch: int = 256, spill_ttl: float = 60.0, keepalive: float = 30.0) -> None:
        self.replica_id = secrets.token_hex(8)
        self.stats = RelayStats()
        self._url, self._hub, self._channel = url, hub, channel
        self._queue: asyncio.Queue[Item] = asyncio.Queue(maxsize=queue_size)
        self._batch, self._spill_ttl, self._keepalive = batch, spill_ttl, keepalive
        self._count = 0  # payloads sent: makes each one unique
        self._lost = False  # messages were dropped: the others must resync
        self._swept_at = 0.0
        self._listener: Connection | None = None
        self._notifier: Connection | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._listening, self._sending = False, True
        self._listen_problem = self._send_problem = ""

    def health(self) -> RelayHealth:
        """How the relay is doing now (readiness and the ``replica_lagging`` condition)."""
        return RelayHealth(self._listening, self._sending, self._queue.qsize(),
                           self._queue.maxsize,
                           self._listen_problem if not self._listening else self._send_problem)

    async def start(self) -> None:
        """Connect and listen (raises if the database cannot be reached), then relay."""
        self._notifier = await self._open_notifier()
        try:
            self._listener = await self._open_listener()
        except BaseException:
            await _close(self._notifier)
            raise
        self._hub.listener = self.offer
        self._listening = True
        self._tasks = [asyncio.create_task(self._listen_forever(), name="trainvitals-relay-in"),
                       asyncio.create_task(self._send_forever(), name="trainvitals-relay-out")]

    async def stop(self, timeout: float = 5.0) -> None:
        """Send what is queued (at most ``timeout`` seconds), stop listening, disconnect."""
        self._hub.listener = None
        if self._tasks:
            listen, send = self._tasks
            listen.cancel()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._queue.put(_STOP), timeout)
                await asyncio.wait_for(asyncio.shield(send), timeout)
            send.cancel()
            await asyncio.gather(listen, send, return_exceptions=True)
            self._tasks = []
        for conn in (self._listener, self._notifier):
            await _close(conn)
        self._listener = self._notifier = None

    def offer(self, run: str | None, message: dict[str, Any]) -> None:
        """The hub's listener: queue a local message for the other replicas; never waits."""
        try:
            self._queue.put_nowait((run, message))
        except asyncio.QueueFull:
            self.stats.dropped += 1
            self._lost = True

    # ------------------------------------------------------------ connections

    async def _connect(self, role: str) -> Connection:
        # The name shows in pg_stat_activity (and lets tests find the connection).
        return await psycopg.AsyncConnection.connect(
            self._url, autocommit=True,
            application_name=f"trainvitals relay {role} {self.replica_id}")

    async def _open_notifier(self) -> Connection:
        conn = await self._connect("notify")
        async with conn.transaction():  # replicas starting together must not race on it
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext('trainvitals_relay'))")
            await conn.execute(SPILL_TABLE)
        return conn

    async def _open_listener(self) -> Connection:
        conn = await self._connect("listen")
        await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self._channel)))
        return conn

    # ------------------------------------------------------------ receiving

    async def _listen_forever(self) -> None:
        while True:
            assert self._listener is not None
            try:
                await self._listen(self._listener)
            except Exception as exc:  # a dropped connection, mostly; never stop listening
                log.warning("replica relay: lost the LISTEN connection (%s: %s); reconnecting",
                            type(exc).__name__, exc)
                self._listen_problem = f"lost the LISTEN connection ({type(exc).__name__}: {exc})"
            self._listening = False
            await _close(self._listener)
            self._listener = await self._reopen_listener()
            self._listening, self._listen_problem = True, ""
            self.stats.reconnects += 1
            self._hub.deliver(None, wire.RESYNC)  # what came meanwhile is lost: reload

    async def _reopen_listener(self) -> Connection:
        for delay in _backoff():
            await asyncio.sleep(delay)
            try:
                return await self._open_listener()
            except (psycopg.Error, OSError) as exc:
                log.debug("replica relay: cannot listen yet: %s", exc)
        raise AssertionError("unreachable")

    async def _listen(self, conn: Connection) -> None:
        while True:
            notes = [n async for n in conn.notifies(timeout=self._keepalive, stop_after=1)]
            if not notes:  # quiet: make sure the connection is still there
                await asyncio.wait_for(conn.execute("SELECT 1"), self._keepalive)
            for note in notes:
                await self._receive(conn, note.payload)

    async def _receive(self, conn: Connection, payload: str) -> None:
        try:
            envelope = wire.decode(payload)
        except ValueError:
            log.warning("replica relay: ignored a foreign payload on %s", self._channel)
            return
        if envelope.replica == self.replica_id:
            return
        if envelope.spill is not None:
            if not len(self._hub):  # nobody to show it to: spare the query
                return
            cur = await conn.execute("SELECT body FROM trainvitals_relay WHERE id = %s",
                                     (envelope.spill,))
            row = await cur.fetchone()
            if row is None:  # swept before we got to it
                self._hub.deliver(None, wire.RESYNC)
                return
            envelope = wire.decode(row[0])
        if envelope.message is not None:
            self.stats.received += 1
            self._hub.deliver(envelope.run, envelope.message)

    # ------------------------------------------------------------ sending

    async def _send_forever(self) -> None:
        delays = _backoff()
        while True:
            batch = await self._take(wait=not self._lost)  # a resync owed goes out alone
            stop = bool(batch) and batch[-1] is _STOP
            items = batch[:-1] if stop else batch
            if items or self._lost:
                if await self._send(items):
                    delays = _backoff()
                else:
                    await asyncio.sleep(next(delays))
            if stop:
                return

    async def _take(self, wait: bool) -> list[Item]:
        if not wait and self._queue.empty():
            return []
        batch = [await self._queue.get()]
        while len(batch) < self._batch and batch[-1] is not _STOP and not self._queue.empty():
            batch.append(self._queue.get_nowait())
        return batch

    async def _send(self, items: list[Item]) -> bool:
        """Send one batch in one transaction; on failure drop it and ask for a resync later."""
        lost, self._lost = self._lost, False
        try:
            conn = self._notifier or await self._open_notifier()
            self._notifier = conn
            payloads = [await self._fit(conn, run, piece)
                        for run, message in items for piece in wire.split(run, message)]
            if lost:  # last: what the others reload then includes this batch
                payloads.append(await self._fit(conn, None, wire.RESYNC))
            async with conn.transaction(), conn.cursor() as cur:
                await cur.executemany("SELECT pg_notify(%s, %s)",
                                      [(self._channel, p) for p in payloads])
            self.stats.sent += len(items)
            self.stats.resyncs_sent += lost
            self._sending, self._send_problem = True, ""
            await self._sweep(conn)
        except Exception as exc:  # a dropped connection, mostly; never stop sending
            log.warning("replica relay: could not notify the other replicas (%s: %s); they "
                        "will be told to resync", type(exc).__name__, exc)
            self._lost = True
            self.stats.dropped += len(items)
            self._sending = False
            self._send_problem = (f"could not notify the other replicas "
                                  f"({type(exc).__name__}: {exc})")
            await _close(self._notifier)
            self._notifier = None
            return False
        return True

    async def _fit(self, conn: Connection, run: str | None, message: dict[str, Any]) -> str:
        """The payload for ``message``: itself, or a notice of the row it was spilled to."""
        self._count += 1
        payload = wire.encode(self.replica_id, self._count, run, message)
        if len(payload) <= wire.PAYLOAD_LIMIT:
            return payload
        cur = await conn.execute("INSERT INTO trainvitals_relay (body) VALUES (%s) RETURNING id",
                                 (payload,))
        row = await cur.fetchone()
        assert row is not None
        self.stats.spilled += 1
        return wire.spill_notice(self.replica_id, self._count, int(row[0]))

    async def _sweep(self, conn: Connection) -> None:
        """Delete spilled rows older than ``spill_ttl`` (every quarter of it, if we spill)."""
        now = asyncio.get_running_loop().time()
        if not self.stats.spilled or now - self._swept_at < self._spill_ttl / 4:
            return
        self._swept_at = now
        await conn.execute("DELETE FROM trainvitals_relay WHERE sent_at < now() - "
                           "make_interval(secs => %s)", (self._spill_ttl,))


async def _close(conn: Connection | None) -> None:
    if conn is not None:
        with contextlib.suppress(Exception):  # already broken: nothing more to say
            await conn.close()
