"""The trainer-facing websocket: authenticate, decode frames, hand records to the writer.

Thin I/O over the protocol: no parsing here. A bad frame gets an ``error`` frame and a log line
and is otherwise ignored — nothing of it is stored and the connection stays up for valid
frames. The handshake response states ``max_message_bytes`` in a header, so senders can size
their frames before the first one.

Replies never grow without bound: acks are cumulative, so only the latest per stream is kept
until it is sent; error frames wait in a small queue, and a client that sends bad frames
without reading the answers stops being read (backpressure on its own connection only).
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Sequence

from starlette.websockets import WebSocket, WebSocketDisconnect

from trainvitals.protocol import (
    Ack,
    Batch,
    Error,
    ProtocolError,
    Record,
    RunEnd,
    RunStart,
    Step,
    decode,
    encode,
)
from trainvitals.protocol.binary import BINARY_VERSION, decode_binary_values, is_binary
from trainvitals.protocol.codec import PROTOCOL_VERSION
from trainvitals.protocol.codec import _check_size as check_size
from trainvitals.protocol.transport import MAX_MESSAGE_BYTES_HEADER, VERSIONS_HEADER
from trainvitals.server.ingest.deliveries import DeliveryReports
from trainvitals.server.ingest.writer import Writer
from trainvitals.server.security import origin_allowed, presented_token, refuse, token_ok
from trainvitals.server.settings import Settings

__all__ = ["serve_ingest"]

log = logging.getLogger("trainvitals.server")
READS = f"{PROTOCOL_VERSION},{BINARY_VERSION}".encode()  # the frame versions decode() reads
LOGGED_BAD_FRAMES = 10  # per connection; the rest are counted and summed up at the end
Stream = tuple[str, int, str]


async def serve_ingest(ws: WebSocket, settings: Settings, writer: Writer,
                       reports: DeliveryReports | None = None,
                       bad_frames: Counter[str] | None = None) -> None:
    """Run one trainer connection until it closes. ``reports`` hears what each frame says of
    its sender's backlog; ``bad_frames`` counts the frames refused undecoded, by code."""
    if not token_ok(settings.ingest_token, presented_token(ws)):
        log.warning("ingest refused from %s: missing or wrong token", _peer(ws))
        await refuse(ws, 401, "missing or wrong ingest token")
        return
    if not origin_allowed(ws, settings.allowed_origins, required=False):
        log.warning("ingest refused from %s: foreign Origin", _peer(ws))
        await refuse(ws, 403, "origin not allowed")
        return
    limit = str(settings.max_message_bytes).encode()
    await ws.accept(headers=[(MAX_MESSAGE_BYTES_HEADER.encode(), limit),
                             (VERSIONS_HEADER.encode(), READS)])
    replies = _Replies()
    pump = asyncio.create_task(replies.pump(ws))
    heard = _Heard(reports, bad_frames if bad_frames is not None else Counter())
    bad = 0
    try:
        bad = await _receive_frames(ws, settings, writer, replies, heard)
    finally:
        pump.cancel()
        heard.close()
        if bad > LOGGED_BAD_FRAMES:
            log.warning("connection from %s ended after %d bad frames (%d not logged)",
                        _peer(ws), bad, bad - LOGGED_BAD_FRAMES)


class _Replies:
    """What goes back to one trainer: the latest ack per stream, and error frames in order."""

    def __init__(self) -> None:
        self.errors: asyncio.Queue[Error] = asyncio.Queue(maxsize=64)
        self.acks: dict[Stream, Ack] = {}
        self.wake = asyncio.Event()

    def ack(self, acks: list[Ack]) -> None:
        """Writer callback: keep the newest ack of each stream (acks are cumulative)."""
        for a in acks:
            key = (a.run, a.rank, a.session)
            if key not in self.acks or self.acks[key].seq < a.seq:
                self.acks[key] = a
        self.wake.set()

    def fail(self, error: Error) -> None:
        """Writer callback: a frame could not be committed. Never blocks the writer."""
        try:
            self.errors.put_nowait(error)
        except asyncio.QueueFull:
            log.warning("dropped an error frame for a client that does not read: %s",
                        error.message)
        self.wake.set()

    async def error(self, error: Error) -> None:
        """Queue an error frame, waiting while the client has not read the earlier ones."""
        await self.errors.put(error)
        self.wake.set()

    async def pump(self, ws: WebSocket) -> None:
        """Send what is due: errors first (they are older than any ack now pending)."""
        try:
            while True:
                await self.wake.wait()
                self.wake.clear()
                while not self.errors.empty():
                    await ws.send_text(encode(self.errors.get_nowait()))
                acks, self.acks = list(self.acks.values()), {}
                for a in acks:
                    await ws.send_text(encode(a))
        except (WebSocketDisconnect, RuntimeError, OSError):
            return  # the receive loop notices the disconnect and ends the connection


class _Heard:
    """What one connection's frames tell beyond their records: the sender's backlog (to the
    delivery reports) and the frames refused undecoded (counted by code)."""

    def __init__(self, reports: DeliveryReports | None, bad: Counter[str]) -> None:
        self._reports, self.bad = reports, bad
        self._id = reports.connect() if reports is not None else 0

    def frame(self, message: object) -> None:
        if self._reports is not None and isinstance(message, Batch):
            self._reports.reported(self._id, message)

    def close(self) -> None:
        if self._reports is not None:
            self._reports.disconnected(self._id)


async def _receive_frames(ws: WebSocket, settings: Settings, writer: Writer,
                          replies: _Replies, heard: _Heard) -> int:
    """Read frames until the client leaves; returns how many were bad."""
    bad = 0
    while True:
        try:
            message = await ws.receive()
        except WebSocketDisconnect:
            return bad
        if message["type"] == "websocket.disconnect":
            return bad
        data = message.get("text") if message.get("text") is not None else message.get("bytes")
        if data is None:
            continue
        try:
            records, values = _records(data, settings.max_message_bytes, heard)
        except ProtocolError as exc:
            bad += 1
            heard.bad[exc.code] += 1
            if bad <= LOGGED_BAD_FRAMES:
                log.warning("bad frame from %s (%s): %s", _peer(ws), exc.code, exc)
            await replies.error(Error(code=exc.code, message=str(exc)))
            continue
        if records:
            await writer.submit(records, replies.ack, replies.fail, values=values)


def _records(data: str | bytes, limit: int, heard: _Heard
             ) -> tuple[list[Record], Sequence[dict[str, float] | None] | None]:
    """The records of one frame, all valid, and (a binary frame) each one's series values
    as the decoder found them; ``ProtocolError`` for anything else."""
    values: Sequence[dict[str, float] | None] | None = None
    if isinstance(data, bytes) and is_binary(data):
        check_size(data, limit)
        message: object
        message, values = decode_binary_values(data)
    else:
        message = decode(data, max_bytes=limit)
    heard.frame(message)
    if isinstance(message, Batch):
        return list(message.records), values
    if isinstance(message, (RunStart, Step, RunEnd)):
        return [message], None
    raise ProtocolError(f"{type(message).__name__.lower()} frames are sent by the server, "
                        "not to it")


def _peer(ws: WebSocket) -> str:
    return f"{ws.client.host}:{ws.client.port}" if ws.client else "unknown peer"
