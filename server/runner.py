"""Run an app under uvicorn on a socket we bind ourselves, in the foreground or a thread.

Binding first means port 0 works (the OS picks a free port) and the real address is known
before anyone connects — what the demo and the tests need.
"""

from __future__ import annotations

import socket
import threading
import time

import uvicorn

from trainvitals.server.app import create_app
from trainvitals.server.settings import Settings

__all__ = ["ServerThread", "bind", "serve_forever"]


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on (host, port); clear error if the port is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise SystemExit(f"trainvitals: cannot listen on {host}:{port}: {exc.strerror}. "
                         "Pick another --port (0 chooses a free one).") from None
    sock.listen(128)
    return sock


def _config(settings: Settings, log_level: str) -> uvicorn.Config:
    # uvicorn's own frame limit sits above ours, so oversized frames reach our code and get a
    # readable error frame instead of a bare close.
    return uvicorn.Config(create_app(settings), log_level=log_level, access_log=False,
                          ws_max_size=4 * settings.max_message_bytes, lifespan="on")


def serve_forever(settings: Settings, log_level: str = "info") -> None:
    """Serve until interrupted (Ctrl+C)."""
    sock = bind(settings.host, settings.port)
    uvicorn.Server(_config(settings, log_level)).run(sockets=[sock])


class ServerThread:
    """A real server in a background thread of this process (demo and tests)."""

    def __init__(self, settings: Settings, log_level: str = "warning") -> None:
        self.settings = settings
        self._sock = bind(settings.host, settings.port)
        self.port: int = self._sock.getsockname()[1]
        self._server = uvicorn.Server(_config(settings, log_level))
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._sock]},
                                        name="trainvitals-server", daemon=True)

    @property
    def http_url(self) -> str:
        """Base URL for browsers and REST."""
        return f"http://{self.settings.host}:{self.port}"

    @property
    def ws_url(self) -> str:
        """Base URL for the trainer plugin."""
        return f"ws://{self.settings.host}:{self.port}"

    def start(self, timeout: float = 15.0) -> ServerThread:
        """Start serving; returns once the server accepts connections."""
        self._thread.start()
        end = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > end:
                raise RuntimeError("trainvitals server did not start")
            time.sleep(0.02)
        return self

    def stop(self, timeout: float = 15.0) -> None:
        """Ask the server to finish (commits queued records) and wait for it."""
        self._server.should_exit = True
        self._thread.join(timeout)
        self._sock.close()

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
