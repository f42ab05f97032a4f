"""Who may talk to the server, and what every answer carries.

Tokens are compared in constant time and never logged (uvicorn logs each websocket handshake
with its query string, where browsers put the view token: a log filter redacts it, and the
password of a database URL such as ``postgresql://user:secret@host/db`` too). Websocket
Origins are checked against cross-site websocket hijacking. Every HTTP answer — pages, API,
errors, refused handshakes — carries the same security headers and a Content-Security-Policy
without inline script.
"""

from __future__ import annotations

import hmac
import logging
import re
import secrets
from collections.abc import Iterable
from urllib.parse import urlsplit

from starlette.requests import HTTPConnection
from starlette.responses import PlainTextResponse
from starlette.websockets import WebSocket

__all__ = [
    "SECURITY_HEADERS",
    "new_token",
    "origin_allowed",
    "presented_token",
    "redact_tokens_in_logs",
    "redact_url",
    "refuse",
    "token_ok",
]

SECURITY_HEADERS = {
    # plotly.js injects <style> elements, hence 'unsafe-inline' for styles only; no inline script.
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; "
    "style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
# Loggers that print request paths (with their query strings) in the servers we run under.
PATH_LOGGERS = ("uvicorn.error", "uvicorn.access")
_SECRET = re.compile(r"(?i)((?:^|[?&;\s])token=|bearer\s+)[^&\s\"']+")
# The password in a URL's user info: scheme://user:PASSWORD@host
_URL_PASSWORD = re.compile(r"(?i)(\b[a-z][a-z0-9+.-]*://[^:/@\s]*:)\S*(@)")


def new_token(nbytes: int = 24) -> str:
    """A random URL-safe token that never starts with ``-``: a command line would read such a
    value (``--token -abc…``) as an option of its own."""
    while True:
        token = secrets.token_urlsafe(nbytes)
        if not token.startswith("-"):
            return token


def redact_url(text: str) -> str:
    """``text`` with the password of any ``scheme://user:password@host`` in it redacted."""
    return _URL_PASSWORD.sub(r"\1[redacted]\2", text)


async def refuse(ws: WebSocket, status: int, reason: str) -> None:
    """Turn a websocket handshake down with an HTTP status and a reason the client can read."""
    if "websocket.http.response" in ws.scope.get("extensions", {}):
        await ws.send_denial_response(
            PlainTextResponse(reason, status_code=status, headers=SECURITY_HEADERS))
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


class RedactTokens(logging.Filter):
    """Rewrites a log record so that no ``token=…`` or ``Bearer …`` value, nor a URL's
    password, survives in it."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        redacted = redact_url(_SECRET.sub(r"\1[redacted]", text))
        if redacted != text:
            record.msg, record.args = redacted, ()
        return True


def redact_tokens_in_logs(names: Iterable[str] = PATH_LOGGERS) -> None:
    """Install ``RedactTokens`` on the named loggers (once; safe to call again).

    A filter on the logger itself, not on a handler, survives uvicorn's logging setup, which
    replaces handlers but keeps filters.
    """
    for name in names:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactTokens) for f in logger.filters):
            logger.addFilter(RedactTokens())
