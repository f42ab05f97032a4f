"""Real ``trainvitals serve`` subprocesses for the end-to-end tests, and a bounded poll.

``serve(data, log, token=...)`` starts ``python -m trainvitals.cli serve`` on a free (or given)
port, waits for ``/healthz`` and stops it after the test — resuming it first if the test froze
it with SIGSTOP. ``wait_for(condition, what)`` polls every 50 ms, bounded by a count: the tests
assert what happens, never how fast.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import httpx
import pytest

WaitFor = Callable[..., None]


def poll_until(condition: Callable[[], bool], what: str, polls: int = 1200) -> None:
    """Poll every 50 ms until ``condition()``; bounded by a count, not asserted on time."""
    pause = threading.Event()
    for _ in range(polls):
        if condition():
            return
        pause.wait(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServeProcess:
    """``python -m trainvitals.cli serve`` on ``port`` with ``data`` as its data directory."""

    def __init__(self, port: int, data: Path, log: Path, token: str,
                 args: Sequence[str] = ()) -> None:
        self.port, self.data, self.log = port, data, log
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "trainvitals.cli", "serve", "--port", str(port),
                 "--data-dir", str(data), "--ingest-token", token, "--no-log-alerts",
                 "--log-level", "warning", *args], stdout=out, stderr=subprocess.STDOUT)
        poll_until(self._healthy, f"the server on port {port} (log: {log})")

    def _healthy(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"server exited: {self.log.read_text()}")
        try:
            return httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def signal(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    def kill9(self) -> None:
        self.proc.kill()  # SIGKILL: no shutdown, no final commit
        assert self.proc.wait(30) == -signal.SIGKILL

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)  # a frozen one cannot act on SIGTERM
            self.proc.terminate()
            self.proc.wait(30)


@pytest.fixture
def serve() -> Iterator[Callable[..., ServeProcess]]:
    """Starts servers: ``serve(data, log, token=..., port=None, args=())``; stops them after."""
    made: list[ServeProcess] = []

    def start(data: Path, log: Path, *, token: str, port: int | None = None,
              args: Sequence[str] = ()) -> ServeProcess:
        srv = ServeProcess(port or free_port(), data, log, token, args)
        made.append(srv)
        return srv

    yield start
    for srv in made:
        srv.stop()


@pytest.fixture
def wait_for() -> WaitFor:
    """``wait_for(condition, what, polls=1200)``: see ``poll_until``."""
    return poll_until
