"""The trainer-facing websocket: authenticate, decode frames, hand records to the writer.

Thin I/O over the protocol: no parsing here. A bad frame gets an ``error`` frame and is
otherwise ignored — nothing of it is stored and the connection stays up for valid frames.
"""

from __future__ import annotations

import asyncio
import logging

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
from trainvitals.server.security import origin_allowed, presented_token, refuse, token_ok
from trainvitals.server.settings import Settings
from trainvitals.server.writer import Writer

__all__ = ["serve_ingest"]

log = logging.getLogger("trainvitals.server")


async def serve_ingest(ws: WebSocket, settings: Settings, writer: Writer) -> None:
    """Run one trainer connection until it closes."""
    if not token_ok(settings.ingest_token, presented_token(ws)):
        log.warning("ingest refused from %s: missing or wrong token", _peer(ws))
        await refuse(ws, 401, "missing or wrong ingest token")
        return
    if not origin_allowed(ws, settings.allowed_origins, required=False):
        log.warning("ingest refused from %s: foreign Origin", _peer(ws))
        await refuse(ws, 403, "origin not allowed")
        return
    await ws.accept()
    outbox: asyncio.Queue[str] = asyncio.Queue()
    pump = asyncio.create_task(_send_replies(ws, outbox))
    try:
        await _receive_frames(ws, settings, writer, outbox)
    finally:
        pump.cancel()


async def _receive_frames(ws: WebSocket, settings: Settings, writer: Writer,
                          outbox: asyncio.Queue[str]) -> None:
    def reply(acks: list[Ack]) -> None:
        for ack in acks:
            outbox.put_nowait(encode(ack))

    while True:
        try:
            message = await ws.receive()
        except WebSocketDisconnect:
            return
        if message["type"] == "websocket.disconnect":
            return
        data = message.get("text") if message.get("text") is not None else message.get("bytes")
        if data is None:
            continue
        records = _records_or_error(data, settings.max_message_bytes, ws, outbox)
        if records:
            await writer.submit(records, reply)


def _records_or_error(data: str | bytes, limit: int, ws: WebSocket,
                      outbox: asyncio.Queue[str]) -> list[Record]:
    try:
        message = decode(data, max_bytes=limit)
    except ProtocolError as exc:
        log.warning("bad frame from %s (%s): %s", _peer(ws), exc.code, exc)
        outbox.put_nowait(encode(Error(code=exc.code, message=str(exc))))
        return []
    if isinstance(message, Batch):
        return list(message.records)
    if isinstance(message, (RunStart, Step, RunEnd)):
        return [message]
    outbox.put_nowait(encode(Error(code="invalid", message=f"{type(message).__name__.lower()} "
                                   "frames are sent by the server, not to it")))
    return []


async def _send_replies(ws: WebSocket, outbox: asyncio.Queue[str]) -> None:
    try:
        while True:
            await ws.send_text(await outbox.get())
    except (WebSocketDisconnect, RuntimeError):
        return  # the receive loop notices the disconnect and ends the connection


def _peer(ws: WebSocket) -> str:
    return f"{ws.client.host}:{ws.client.port}" if ws.client else "unknown peer"
