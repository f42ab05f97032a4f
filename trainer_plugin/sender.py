"""The one background thread that talks to the server.

Training threads only ``submit()``: a non-blocking put into a bounded queue. When the queue is
full the item is dropped and counted — the step never waits on the network. The thread
batches records into frames, reconnects with backoff, reads acknowledgements and server
errors, and never lets an exception escape into the training process.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from websockets.exceptions import InvalidStatus, WebSocketException
from websockets.sync.client import ClientConnection, connect

from trainvitals.protocol import Ack, Batch, Error, ProtocolError, Record, decode, encode
from trainvitals.trainer_plugin.backoff import backoff_delays

__all__ = ["DeliveryStats", "Sender", "Submittable"]

log = logging.getLogger("trainvitals")
Stream = tuple[str, int, str]  # (run, rank, session)


class Submittable(Protocol):
    """A record, or something that becomes one once its device values reach the host."""

    def build(self) -> Record: ...


@dataclass
class DeliveryStats:
    """Counters of what happened to submitted records (a snapshot)."""

    submitted: int = 0
    sent: int = 0
    dropped: int = 0
    connected: bool = False
    reconnects: int = 0
    server_errors: int = 0
    last_error: str = ""
    acked: dict[Stream, int] = field(default_factory=dict)


_STOP = object()


class Sender:
    """Delivers records to ``url`` from a daemon thread; see the module docstring."""

    def __init__(
        self, url: str, token: str | None, *, queue_size: int = 10_000, batch_size: int = 256,
        max_frame_bytes: int = 1 << 20, idle_poll: float = 0.05,
        connect: Callable[..., ClientConnection] = connect,
    ) -> None:
        self.url, self._token = url, token
        self._queue: queue.Queue[object] = queue.Queue(maxsize=queue_size)
        self._batch_size, self._max_frame = batch_size, max_frame_bytes
        self._idle_poll, self._connect_fn = idle_poll, connect
        self._ws: ClientConnection | None = None
        self._stats = DeliveryStats()
        self._changed = threading.Condition()
        self._closing = threading.Event()
        self._deadline = float("inf")
        self._last_seq: dict[Stream, int] = {}
        self._thread = threading.Thread(target=self._run, name="trainvitals-sender", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------ training-thread side

    def submit(self, item: Submittable | Record, stream: Stream, seq: int) -> bool:
        """Queue ``item`` without blocking; False (and counted) when the queue is full."""
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            with self._changed:
                self._stats.dropped += 1
                first = self._stats.dropped == 1
            if first:
                log.warning("trainvitals: send queue full, dropping records (server slow or "
                            "unreachable at %s); the count is reported with the run", self.url)
            return False
        with self._changed:
            self._stats.submitted += 1
            self._last_seq[stream] = seq
        return True

    def stats(self) -> DeliveryStats:
        """A snapshot of the delivery counters."""
        with self._changed:
            s = self._stats
            return DeliveryStats(s.submitted, s.sent, s.dropped, s.connected, s.reconnects,
                                 s.server_errors, s.last_error, dict(s.acked))

    def flush(self, timeout: float) -> bool:
        """Wait until the server acknowledged every queued record; False on timeout."""
        end = time.monotonic() + timeout
        with self._changed:
            while not self._all_acked():
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(left)
        return True

    def close(self, timeout: float) -> DeliveryStats:
        """Deliver what is queued within ``timeout`` seconds, then stop the thread."""
        self.flush(timeout)
        self._deadline = time.monotonic()
        self._closing.set()
        # Never wait for room: with the queue full, the thread stops once it has emptied it.
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(_STOP)
        self._thread.join(timeout=2.0)
        return self.stats()

    def _all_acked(self) -> bool:
        acked = self._stats.acked
        return all(acked.get(stream, -1) >= seq for stream, seq in self._last_seq.items())

    # ------------------------------------------------------------ sender-thread side

    def _run(self) -> None:
        try:
            while True:
                records, stop = self._collect()
                if records:
                    self._deliver(records)
                if stop:
                    break
        except Exception:  # a bug here must not take the training process down
            log.exception("trainvitals: sender thread failed; monitoring stops, training goes on")
        finally:
            self._disconnect()

    def _collect(self) -> tuple[list[Record], bool]:
        try:
            first = self._queue.get(timeout=self._idle_poll)
        except queue.Empty:
            self._read_replies()
            # Closed, and nothing left: stop even if _STOP found no room in a full queue.
            return [], self._closing.is_set() and time.monotonic() >= self._deadline
        items = [first]
        while len(items) < self._batch_size and items[-1] is not _STOP:
            try:
                items.append(self._queue.get_nowait())
            except queue.Empty:
                break
        stop = items[-1] is _STOP
        return [r for r in map(self._build, items) if r is not None], stop

    def _build(self, item: object) -> Record | None:
        if item is _STOP:
            return None
        try:
            return item.build() if hasattr(item, "build") else item  # type: ignore[return-value]
        except Exception:
            log.exception("trainvitals: could not read a step's values; dropping that step")
            with self._changed:
                self._stats.dropped += 1
            return None

    def _deliver(self, records: list[Record]) -> None:
        frames = self._frames(records)
        backoff = backoff_delays()
        while frames:
            if self._ws is None and not self._reconnect(backoff):
                self._count_dropped(sum(n for _, n in frames))
                return
            try:
                assert self._ws is not None
                self._ws.send(frames[0][0])
            except (WebSocketException, OSError) as exc:
                self._note_error(f"send failed: {exc}")
                self._disconnect()
                continue
            with self._changed:
                self._stats.sent += frames[0][1]
            frames.pop(0)
        self._read_replies()

    def _frames(self, records: list[Record]) -> list[tuple[str, int]]:
        frame = encode(Batch(tuple(records), dropped=self._stats.dropped))
        if len(frame.encode()) <= self._max_frame or len(records) == 1:
            return [(frame, len(records))]
        half = len(records) // 2
        return self._frames(records[:half]) + self._frames(records[half:])

    def _reconnect(self, backoff: object) -> bool:
        """Connect, sleeping between failures; False once closing and past the deadline."""
        for delay in backoff:  # type: ignore[attr-defined]
            if self._closing.is_set() and time.monotonic() >= self._deadline:
                return False
            try:
                self._ws = self._open()
            except InvalidStatus as exc:
                self._note_error(f"server refused the connection: HTTP "
                                 f"{exc.response.status_code} (check the token)")
            except (OSError, WebSocketException, TimeoutError) as exc:
                self._note_error(f"cannot connect to {self.url}: {exc}")
            else:
                with self._changed:
                    self._stats.connected = True
                    self._stats.reconnects += 1
                return True
            self._closing.wait(delay)
        return False

    def _open(self) -> ClientConnection:
        headers = {"Authorization": f"Bearer {self._token}"} if self._token else None
        ws = self._connect_fn(self.url, additional_headers=headers, open_timeout=5,
                              close_timeout=1, proxy=None, max_size=self._max_frame)
        # Enter it as a context manager (left by ws.close() in _disconnect): websockets >= 17.1
        # warns on the first send of a connection used otherwise, and a warnings-as-errors
        # setting would turn that warning into an exception that ends this thread.
        ws.__enter__()
        return ws

    def _read_replies(self) -> None:
        while self._ws is not None:
            try:
                frame = self._ws.recv(timeout=0)
            except TimeoutError:
                return
            except (WebSocketException, OSError) as exc:
                self._note_error(f"connection lost: {exc}")
                self._disconnect()
                return
            self._handle_reply(frame)

    def _handle_reply(self, frame: str | bytes) -> None:
        try:
            message = decode(frame)
        except ProtocolError as exc:
            self._note_error(f"unreadable reply from server: {exc}")
            return
        with self._changed:
            if isinstance(message, Ack):
                stream = (message.run, message.rank, message.session)
                self._stats.acked[stream] = max(message.seq, self._stats.acked.get(stream, -1))
                self._changed.notify_all()
            elif isinstance(message, Error):
                self._stats.server_errors += 1
        if isinstance(message, Error):
            self._note_error(f"server error {message.code}: {message.message}")

    def _note_error(self, text: str) -> None:
        with self._changed:
            repeated = text == self._stats.last_error
            self._stats.last_error = text
        if not repeated:  # one line per distinct problem, not one per retry
            log.warning("trainvitals: %s", text)

    def _count_dropped(self, n: int) -> None:
        with self._changed:
            self._stats.dropped += n
            self._changed.notify_all()

    def _disconnect(self) -> None:
        ws, self._ws = self._ws, None
        with self._changed:
            self._stats.connected = False
        if ws is not None:
            with contextlib.suppress(Exception):  # already broken; nothing to tell the user
                ws.close()


