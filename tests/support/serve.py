"""``trainvitals serve`` as its own process, the way users run it."""

from __future__ import annotations

import contextlib
import ctypes
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import httpx

from tests.support.ports import free_port
from tests.support.waiting import poll_until

__all__ = ["ServeProcess"]


def _die_with_parent() -> None:
    """In the child: get SIGTERM when the parent dies, so no server is left behind (Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class ServeProcess:
    """``python -m trainvitals.cli serve`` on 127.0.0.1 with ``data`` as its data directory.

    Waits for ``/healthz`` before returning. ``port`` defaults to a free one, ``data`` to a
    temporary directory removed by ``stop()``, ``log`` (a file) to no output.
    """

    def __init__(self, *, token: str, port: int | None = None, data: Path | None = None,
                 log: Path | None = None, args: Sequence[str] = ()) -> None:
        self._tmp = None if data is not None else tempfile.TemporaryDirectory(
            prefix="trainvitals-serve-")
        self.data = data if data is not None else Path(self._tmp.name)  # type: ignore[union-attr]
        self.port, self.log, self.token = port or free_port(), log, token
        out: IO[bytes] | int = log.open("ab") if log is not None else subprocess.DEVNULL
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "trainvitals.cli", "serve", "--host", "127.0.0.1",
                 "--port", str(self.port), "--data-dir", str(self.data),
                 "--ingest-token", token, "--no-log-alerts", "--log-level", "warning", *args],
                stdout=out, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
        finally:
            if not isinstance(out, int):
                out.close()
        try:
            poll_until(self._healthy, f"the server on port {self.port} (log: {log})")
        except BaseException:
            self.stop()
            raise

    def _healthy(self) -> bool:
        if self.proc.poll() is not None:
            shown = self.log.read_text() if self.log is not None else "(no log kept)"
            raise AssertionError(f"server exited with {self.proc.returncode}: {shown}")
        try:
            return httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    http_url = url

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def db_path(self) -> Path:
        return self.data / "trainvitals.sqlite3"

    def get(self, path: str, **params: Any) -> Any:
        """GET a REST path; the JSON body."""
        response = httpx.get(f"{self.url}{path}", params=params, timeout=120)
        response.raise_for_status()
        return response.json()

    def signal(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    def kill9(self) -> None:
        """SIGKILL: no shutdown, no final commit."""
        self.proc.kill()
        assert self.proc.wait(30) == -signal.SIGKILL

    def stop(self) -> None:
        """Ask it to finish (queued records are committed on SIGTERM) and wait."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)  # a frozen one cannot act on SIGTERM
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._tmp is not None:
            self._tmp.cleanup()

    def __enter__(self) -> ServeProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
