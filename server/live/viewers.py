"""The browser-facing websocket: subscribe to runs, receive their new points and alerts.

The page sends ``{"subscribe": ["run name", ...]}`` (replacing what it followed before);
the server pushes ``steps``, ``alert``, ``run`` and ``resync`` messages (see docs/protocol.md).
Same-origin pages only, unless ``allowed_origins`` lists others.
"""

from __future__ import annotations

import asyncio
import json

from starlette.websockets import WebSocket, WebSocketDisconnect

from trainvitals.protocol.wire_json import wire_dumps
from trainvitals.server.live.hub import Hub, Viewer
from trainvitals.server.security import origin_allowed, presented_token, refuse, token_ok
from trainvitals.server.settings import Settings

__all__ = ["serve_viewer"]


async def serve_viewer(ws: WebSocket, settings: Settings, hub: Hub) -> None:
    """Run one browser connection until it closes."""
    if not origin_allowed(ws, settings.allowed_origins, required=True):
        await refuse(ws, 403, "origin not allowed")
        return
    if not token_ok(settings.view_token, presented_token(ws)):
        await refuse(ws, 401, "missing or wrong view token")
        return
    await ws.accept()
    viewer = hub.connect()
    pump = asyncio.create_task(_push(ws, viewer))
    try:
        await _read_subscriptions(ws, viewer)
    finally:
        pump.cancel()
        hub.disconnect(viewer)


async def _read_subscriptions(ws: WebSocket, viewer: Viewer) -> None:
    while True:
        try:
            text = await ws.receive_text()
        except (WebSocketDisconnect, RuntimeError, KeyError):
            return
        try:
            runs = json.loads(text)["subscribe"]
            if not isinstance(runs, list) or not all(isinstance(r, str) for r in runs):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            await ws.send_text(wire_dumps({"type": "error", "message":
                                           'expected {"subscribe": ["run", ...]}'}))
            continue
        viewer.runs = set(runs)


async def _push(ws: WebSocket, viewer: Viewer) -> None:
    try:
        while True:
            await ws.send_text(wire_dumps(await viewer.queue.get()))
    except (WebSocketDisconnect, RuntimeError):
        return
