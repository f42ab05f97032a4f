"""Who may talk to the server: token checks (constant time) and websocket Origin checks."""

from __future__ import annotations

import hmac
from collections.abc import Iterable
from urllib.parse import urlsplit

from starlette.requests import HTTPConnection
from starlette.responses import PlainTextResponse
from starlette.websockets import WebSocket

__all__ = ["origin_allowed", "presented_token", "refuse", "token_ok"]


async def refuse(ws: WebSocket, status: int, reason: str) -> None:
    """Turn a websocket handshake down with an HTTP status and a reason the client can read."""
    if "websocket.http.response" in ws.scope.get("extensions", {}):
        await ws.send_denial_response(PlainTextResponse(reason, status_code=status))
    else:
        await ws.close(code=1008, reason=reason)


def presented_token(conn: HTTPConnection) -> str | None:
    """The token a client sent: ``Authorization: Bearer …`` or the ``token`` query parameter."""
    header = conn.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip()
    return conn.query_params.get("token")


def token_ok(expected: str | None, presented: str | None) -> bool:
    """True when no token is required, or the presented one matches (constant-time compare)."""
    if expected is None:
        return True
    if presented is None:
        return False
    return hmac.compare_digest(expected.encode(), presented.encode())


def origin_allowed(conn: HTTPConnection, extra: Iterable[str], *, required: bool) -> bool:
    """Same-origin or listed browsers pass; a missing Origin passes unless ``required``.

    Browsers always send Origin on websockets, so a foreign page (cross-site websocket
    hijacking) is refused; non-browser clients such as the trainer plugin send none.
    """
    origin = conn.headers.get("origin")
    if origin is None:
        return not required
    if origin in set(extra):
        return True
    parts = urlsplit(origin)
    return bool(parts.netloc) and parts.netloc == conn.headers.get("host")
