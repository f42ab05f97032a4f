"""The connection to the server: send what the spool holds, resend what was not acknowledged.

Runs on one thread (the sender thread): the thin I/O layer around ``outbox.Outbox``, the pure
state machine that decides what is sent, resent, deleted or given up. The link connects with
backoff, reads the records the outbox asks for from the spool, sends them in batch frames of at
most the server's ``max_message_bytes`` (read from the handshake), and tells the outbox what
the server answered; it deletes records from the spool only when the outbox says they are newly
acknowledged. Resends after a reconnect or an ``unavailable`` error (a failed commit) are safe:
the server stores each record once. A fatal error (a server limit) stops delivery and leaves
the records in the spool for ``trainvitals sync``. Every batch frame carries the spool's
``Backlog`` (counts the spool keeps anyway: no record is read for it), so the server can say
when a trainer falls behind.

While the server answers ``unavailable`` (it cannot store: its disk is full, its database
does not answer) the link backs off and *probes*: it sends one frame per try, not a window
full, until one is acknowledged; answers to frames sent before the pause are taken without
another pause. ``on_problem(text, retry_in)`` hears every problem — a failed connect, a server
error frame (``"server: unavailable — storage full: …"``) — with the seconds until the next
try (``None``: no retry); ``trainvitals sync`` prints them.

Failover: ``url`` may list several servers, comma-separated (replicas on one database, see
docs/scaling.md). The link stays on one while its connection lives; when a connect fails or
the connection is lost it moves to the next, in order and round again, and resends what was
not acknowledged — the replicas share the database, which stores each record once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from websockets.exceptions import InvalidStatus, WebSocketException
from websockets.sync.client import ClientConnection, connect

from trainvitals.protocol import (
    Ack,
    Error,
    ProtocolError,
    RunEnd,
    RunStart,
    Step,
    decode,
    encode,
    encode_batch,
)
from trainvitals.protocol.binary import BINARY_VERSION
from trainvitals.protocol.errors import UNAVAILABLE
from trainvitals.protocol.rows import assemble
from trainvitals.protocol.transport import (
    BATCH_OVERHEAD_BYTES,
    DEFAULT_MAX_MESSAGE_BYTES,
    MAX_MESSAGE_BYTES_HEADER,
    VERSIONS_HEADER,
    reads_versions,
)
from trainvitals.trainer_plugin.delivery.backoff import backoff_delays
from trainvitals.trainer_plugin.delivery.outbox import Outbox
from trainvitals.trainer_plugin.delivery.spool import Entry, Spool

__all__ = ["DeliveryStats", "Link", "OnProblem", "ingest_url", "ingest_urls", "server_said"]

log = logging.getLogger("trainvitals")
Stream = tuple[str, int, str]  # (run, rank, session)
OnProblem = Callable[[str, float | None], None]  # (what went wrong, seconds to the next try)


@dataclass
class DeliveryStats:
    """Counters of what happened to submitted records (a snapshot).

    ``sent`` counts records sent once, ``resent`` the repeats after a reconnect or a failed
    commit; ``pending`` the records kept in the spool and not yet acknowledged; ``dropped``
    the records that were never kept (a full queue or spool, or unreadable values);
    ``server`` the ingest URL of the latest connection (one of several, with failover);
    ``server_error`` the latest error frame of the server since records were last
    acknowledged (``"unavailable — storage full: …"``; ``""``: none).
    """

    submitted: int = 0
    sent: int = 0
    dropped: int = 0
    connected: bool = False
    reconnects: int = 0
    server_errors: int = 0
    last_error: str = ""
    acked: dict[Stream, int] = field(default_factory=dict)
    resent: int = 0
    pending: int = 0
    spool: str = ""
    server: str = ""
    server_error: str = ""

    def copy(self) -> DeliveryStats:
        """An independent snapshot."""
        return dataclasses.replace(self, acked=dict(self.acked))


def ingest_url(server: str | None) -> str | None:
    """The ingest websocket URL for a server given as ``host:port``, http(s):// or ws(s)://;
    for several servers, comma-separated, their URLs comma-separated (see ``ingest_urls``)."""
    if not server:
        return None
    parts = [part.strip() for part in server.split(",")]
    if not all(parts):
        raise ValueError(f"server: empty entry in the list {server!r} (expected URLs "
                         "separated by single commas, e.g. 'http://a:8765,http://b:8765')")
    return ",".join(_one_ingest_url(part) for part in parts)


def server_said(error: Error) -> str:
    """An error frame for people: ``unavailable — storage full: …``."""
    return f"{error.code} — {error.message}"


def ingest_urls(url: str) -> list[str]:
    """The servers of a (comma-separated) ingest URL, in the order they are tried."""
    return url.split(",")


def _one_ingest_url(server: str) -> str:
    url = server.rstrip("/")
    for plain, secure in (("http://", "ws://"), ("https://", "wss://")):
        if url.startswith(plain):
            url = secure + url[len(plain):]
    if not url.startswith(("ws://", "wss://")):
        url = "ws://" + url
    return url if url.endswith("/ws/ingest") else url + "/ws/ingest"


class Link:
    """Delivers one stream's spool to ``url``; ``run()`` is the thread body."""

    def __init__(
        self, url: str, token: str | None, spool: Spool, stream: Stream, stats: DeliveryStats,
        changed: threading.Condition, *, batch_size: int = 256,
        max_frame_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, window: int = 2048,
        idle_poll: float = 0.05, linger: float = 0.05,
        connect: Callable[..., ClientConnection] = connect,
        backoff: Callable[[], Iterator[float]] = backoff_delays,
        on_problem: OnProblem | None = None,
    ) -> None:
        self.urls, self._at = ingest_urls(url), 0  # the servers; the one in use (or next)
        self._token, self._spool, self._stream = token, spool, stream
        self._stats, self._changed = stats, changed
        self._max_frame = max_frame_bytes
        self._idle, self._connect_fn = idle_poll, connect
        self._linger, self._last_send = linger, -float("inf")
        self._limit = max_frame_bytes
        self.binary = False  # the server reads version-2 frames (it says so when connecting)
        self._ws: ClientConnection | None = None
        self.outbox = Outbox(acked=spool.acked, next_seq=spool.next_seq, window=window,
                             batch=batch_size)
        self._backoff, self._on_problem = backoff, on_problem
        self._delays = backoff()
        self._probing = False  # the server could not store: one frame per try until an ack
        self._probe_sent = False
        self.stop = threading.Event()

    @property
    def halted(self) -> str:
        """Why delivery stopped for good (a fatal server error), or ``""``."""
        return self.outbox.halted

    @property
    def url(self) -> str:
        """The server in use, or the one tried next."""
        return self.urls[self._at]

    @property
    def connected(self) -> bool:
        """Whether a connection to the server is open now (a lock-free read)."""
        return self._ws is not None

    def run(self) -> None:
        """Deliver until ``stop`` is set; never raises."""
        try:
            while not self.stop.is_set():
                self.outbox.spooled(self._spool.next_seq)
                if self.halted:
                    self.stop.wait(self._idle)
                elif self._ws is None and self.outbox.pending == 0:
                    self._await_records()  # connect when there is something to deliver
                elif self._ws is None and not self._connect_any():
                    self._pause(self._stats.last_error)
                elif self._linger_over() and self._send():
                    self._receive(0.0)
                elif self.outbox.in_flight:
                    self._receive(self._idle)  # the ack on its way wakes us
                else:
                    self._await_records()
        except Exception:  # a bug here must not take the training process down
            log.exception("trainvitals: sender thread failed; records stay in the spool")
        finally:
            self._disconnect()

    def _linger_over(self) -> bool:
        """At most one frame per ``linger`` seconds: records spooled sooner wait and leave
        together, so a fast loop costs the server (often on the same machine) one commit per
        ``linger``, not one per step; a record after a quiet spell leaves at once. The server's
        replies are taken while waiting (an ack read late would hold the window and the spool's
        deletes), and what was spooled meanwhile goes in the frame sent after the wait."""
        end = self._last_send + self._linger
        while (wait := end - time.monotonic()) > 0 and not self.stop.is_set():
            if self._ws is None:
                self.stop.wait(wait)
            else:
                self._receive(min(wait, self._idle))  # (stop is seen within idle_poll)
        self.outbox.spooled(self._spool.next_seq)
        return not self.stop.is_set() and self._ws is not None

    def _await_records(self) -> None:
        """Nothing in flight and nothing to send: sleep until the collector spools a record
        (it notifies ``changed``), so a new record leaves at once instead of at the next poll.
        While frames are in flight the link waits for their ack instead, and what was spooled
        meanwhile leaves together in the next frame (few frames at high step rates)."""
        with self._changed:
            self.outbox.spooled(self._spool.next_seq)
            if self.outbox.idle and not self.stop.is_set():
                self._changed.wait(self._idle)

    # ------------------------------------------------------------ connecting

    def _connect_any(self) -> bool:
        """Try each server once, from the current one; stay on the first that answers."""
        for _ in self.urls:
            if self._connect():
                return True
            self._next_server()
        return False

    def _next_server(self) -> None:
        self._at = (self._at + 1) % len(self.urls)

    def _connect(self) -> bool:
        try:
            headers = {"Authorization": f"Bearer {self._token}"} if self._token else None
            ws = self._connect_fn(self.url, additional_headers=headers, open_timeout=5,
                                  close_timeout=1, proxy=None, max_size=1 << 20, compression=None)
            # Entered as a context manager (left by close()): websockets >= 17.1 warns on the
            # first send of a connection used otherwise, and warnings-as-errors would end us.
            ws.__enter__()
        except InvalidStatus as exc:
            self._note(f"server refused the connection: HTTP {exc.response.status_code} "
                       "(check the token)")
            return False
        except (OSError, WebSocketException, TimeoutError) as exc:
            self._note(f"cannot connect to {self.url}: {exc}")
            return False
        said = ws.response.headers if ws.response else {}
        stated = said.get(MAX_MESSAGE_BYTES_HEADER, "")
        self._limit = min(self._max_frame, int(stated)) if stated.isdigit() else self._max_frame
        self.binary = BINARY_VERSION in reads_versions(said.get(VERSIONS_HEADER, ""))
        self._ws = ws
        self.outbox.connection_opened()  # everything unacknowledged goes out again
        self._delays = self._backoff()
        self._probe_sent = False  # what was sent on the old connection gets no answer now
        with self._changed:
            moved = self._stats.server not in ("", self.url)
            self._stats.connected, self._stats.server = True, self.url
            self._stats.reconnects += 1
        if moved:
            log.warning("trainvitals: failover: now delivering to %s", self.url)
        return True

    def _lost(self, text: str) -> None:
        """The connection broke: drop it; the next connect tries the next server first."""
        self._note(f"{text} ({self.url})" if len(self.urls) > 1 else text)
        self._disconnect()
        self._next_server()

    def _disconnect(self) -> None:
        ws, self._ws = self._ws, None
        self.outbox.connection_lost()
        with self._changed:
            self._stats.connected = False
        if ws is not None:
            with contextlib.suppress(Exception):  # already broken; nothing to tell the user
                ws.close()

    # ------------------------------------------------------------ sending

    def _send(self) -> bool:
        """Send the frame the outbox asks for, if any (something to send, room in the window;
        while probing, only when the probe has been answered)."""
        if self._probing and self._probe_sent:
            return False
        wanted = self.outbox.next_frame()
        if wanted is None or self._ws is None:
            return False
        first, most = wanted
        budget = self._limit - BATCH_OVERHEAD_BYTES
        entries = self._spool.read(first, most, budget)
        if not entries:
            return False
        frame, count = self._frame(entries, budget)
        try:
            self._ws.send(frame)
        except (WebSocketException, OSError) as exc:
            self._lost(f"send failed: {exc}")
            return False
        self._probe_sent = self._probing
        sent = self.outbox.frame_sent(first, count)
        with self._changed:
            self._stats.sent += sent.fresh
            self._stats.resent += sent.resent
        self._last_send = time.monotonic()
        return True

    def _frame(self, entries: list[Entry], budget: int) -> tuple[str | bytes, int]:
        """The frame for the first of ``entries`` (all that fit within the server's limit):
        version 2 when the server reads it, else version 1."""
        dropped, backlog = self._stats.dropped, self._spool.backlog()
        if self.binary and self._spool.stream is not None:
            frame, count = assemble(self._spool.stream, entries, dropped=dropped,
                                    backlog=backlog, max_bytes=self._limit)
            if len(frame) <= self._limit:
                return frame, count
        lines = [self._text(e) for e in entries]  # an older server, or a record alone too big
        size, count = 0, 0
        for line in lines:
            size += len(line.encode("utf-8", "surrogatepass")) + 1
            if count and size > budget:
                break
            count += 1
        if count == 1 and len(lines[0].encode("utf-8", "surrogatepass")) > budget:
            lines[0] = self._fit(lines[0])
        return encode_batch(lines[:count], dropped, backlog), count

    def _text(self, entry: Entry) -> str:
        """An entry as version-1 text (a row is rebuilt as the step it packs)."""
        return entry if isinstance(entry, str) else encode(self._spool.record(entry))

    def _fit(self, line: str) -> str:
        """A record alone over the server's limit (lower than ours when it was spooled): send
        it without its maps, so the stream stays complete; say so."""
        record = decode(line)
        if not isinstance(record, (Step, RunStart, RunEnd)):
            return line
        if isinstance(record, Step):
            clip = record.clip and dataclasses.replace(record.clip, components={})
            record = dataclasses.replace(record, tensors={}, scalars={}, components={}, clip=clip)
        elif isinstance(record, RunStart):
            record = dataclasses.replace(record, config={}, versions={})
        elif isinstance(record, RunEnd):
            record = dataclasses.replace(record, reason=record.reason[:200])
        log.warning("trainvitals: record %d is larger than the server's limit of %d bytes; "
                    "sent without its tensors, scalars and components", record.seq, self._limit)
        return encode(record)

    # ------------------------------------------------------------ receiving

    def _receive(self, timeout: float, *, stale: bool = False) -> None:
        """Handle the server's replies: wait up to ``timeout`` for one, then take the rest.
        ``stale``: they answer frames sent before a pause; an ``unavailable`` among them is
        noted, but neither pauses again nor resends (the resend after the pause covers it)."""
        while self._ws is not None:
            try:
                frame = self._ws.recv(timeout=timeout)
            except TimeoutError:
                return
            except (WebSocketException, OSError) as exc:
                self._lost(f"connection lost: {exc}")
                return
            timeout = 0.0
            try:
                message = decode(frame)
            except ProtocolError as exc:
                self._note(f"unreadable reply from server: {exc}")
                continue
            if isinstance(message, Ack):
                self._acked(message)
            elif isinstance(message, Error):
                self._refused(message, stale=stale)

    def _acked(self, ack: Ack) -> None:
        if (ack.run, ack.rank, ack.session) != self._stream:
            return
        newly = self.outbox.ack(ack.seq)
        if self._probing and self._probe_sent:  # the probe's answer (or a later one)
            self._probing = self._probe_sent = False
        if newly is None:
            return
        self._spool.ack(newly.last)  # deletes the records the outbox hands out, once
        self._delays = self._backoff()  # it stores again: the next trouble starts afresh
        with self._changed:
            self._stats.acked[self._stream] = self._spool.acked
            self._stats.server_error = ""
            self._changed.notify_all()

    def _refused(self, error: Error, *, stale: bool = False) -> None:
        with self._changed:
            self._stats.server_errors += 1
            self._stats.server_error = server_said(error)
        self._note(f"server error {error.code}: {error.message}")
        if error.fatal:
            self.outbox.fatal(error.message)
            log.error("trainvitals: the server refuses this run's records (%s); delivery "
                      "stops, records stay in the spool for `trainvitals sync`", error.message)
            if self._on_problem is not None:
                self._on_problem(f"server: {server_said(error)}", None)
            self._disconnect()
        elif error.code == UNAVAILABLE and not stale:
            # Nothing of some frame was stored: pause, take the answers to the frames sent
            # before (they say the same), then send again from the first unacknowledged
            # record, one frame per try until the server stores again.
            self._pause(f"server: {server_said(error)}")
            self._receive(0.0, stale=True)
            self._probing, self._probe_sent = True, False
            self.outbox.unavailable()

    def _pause(self, why: str) -> None:
        """Wait the next backoff delay before trying again; ``on_problem`` hears why."""
        delay = next(self._delays)
        if self._on_problem is not None:
            self._on_problem(why, delay)
        self.stop.wait(delay)

    def _note(self, text: str) -> None:
        with self._changed:
            repeated = text == self._stats.last_error
            self._stats.last_error = text
        if not repeated:  # one line per distinct problem, not one per retry
            log.warning("trainvitals: %s", text)
