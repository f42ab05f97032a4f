"""Fixtures for the trainer-plugin tests: real servers, dead and silent ports, tidy monitors."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from trainvitals import Monitor
from trainvitals.server import ServerThread, Settings
from trainvitals.trainer_plugin.values import devices

TOKEN = "plugin-token-for-tests"


@pytest.fixture
def token() -> str:
    return TOKEN


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Callable[..., ServerThread]]:
    """Starts real servers on ``tmp_path/data`` (port 0 unless given); stops them after."""
    started: list[ServerThread] = []

    def start(**overrides: Any) -> ServerThread:
        options: dict[str, Any] = {"port": 0, "data_dir": tmp_path / "data",
                                   "ingest_token": TOKEN, "log_alerts": False}
        options.update(overrides)
        srv = ServerThread(Settings(**options)).start()
        started.append(srv)
        return srv

    yield start
    for srv in reversed(started):
        srv.stop()


@pytest.fixture
def server(start_server: Callable[..., ServerThread]) -> ServerThread:
    return start_server()


@pytest.fixture
def monitors(tmp_path: Path) -> Iterator[Callable[..., Monitor]]:
    """Makes monitors and closes whatever the test left open (never at interpreter exit).
    Their spool is ``tmp_path/spool`` unless a test says otherwise."""
    made: list[Monitor] = []

    def make(run: str, server: str | None, **kw: Any) -> Monitor:
        kw.setdefault("token", TOKEN)
        kw.setdefault("spool", tmp_path / "spool")
        mon = Monitor(run, server=server, **kw)
        made.append(mon)
        return mon

    yield make
    for mon in made:
        mon.close(timeout=0.5)


@pytest.fixture
def dead_url() -> Iterator[str]:
    """A websocket URL where nothing listens: the port is bound (so no one else takes it)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    yield f"ws://127.0.0.1:{sock.getsockname()[1]}"
    sock.close()


@pytest.fixture
def silent_listener() -> Iterator[socket.socket]:
    """A listening socket that takes TCP connections but never answers a websocket handshake
    (closing it resets the connections still waiting in its backlog)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    yield sock
    sock.close()


@pytest.fixture
def rest() -> Callable[..., Any]:
    """GET a REST path of a server and return the JSON body (status 200 required)."""
    def get(srv: ServerThread, path: str, **params: Any) -> Any:
        response = httpx.get(f"{srv.http_url}/api{path}", params=params, timeout=10)
        assert response.status_code == 200, response.text
        return response.json()

    return get


@pytest.fixture(params=["cpu rules", "cuda rules"])
def rules(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Runs a test twice on the same CPU tensors: with the CPU's shortcuts (values read at
    once) and with CUDA's rules (every value stays on the device until the step's transfer)."""
    if request.param == "cuda rules":
        monkeypatch.setattr(devices, "READ_NOW", frozenset())
    return str(request.param)
