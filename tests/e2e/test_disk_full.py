"""A server whose disk fills up mid-run says so, everywhere, and loses nothing.

Real parts only: ``trainvitals serve`` in its own process with its data directory on a real
64 MiB tmpfs, a real ``Monitor`` training against it, ``trainvitals sync`` as a subprocess, a
real HTTP receiver for the webhook, SQLite on the small disk. The free-space floor is 8 MiB;
a filler file takes the disk below it mid-run, and deleting it gives the space back:

ready → not ready (503, the reason names the disk) → ready again; ``storage_full`` opens and
resolves (REST and the webhook); the trainer's refused records raise ``spool_backlog`` on its
run, and /metrics shows the backlog; ``Monitor.close()`` says why records stayed behind;
``sync`` prints the server's reason while it waits and exits non-zero on its timeout; once
space returns a second sync uploads everything, and every step is stored exactly once.

The filesystem is a tmpfs mounted for the test (root needed: it skips with the reason where
mount fails). A real SQLite "database or disk is full" at the commit (floor 0, the disk filled
to the last byte) is the second test.
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.serve import ServeProcess
from tests.support.tmpfs import CannotMount, SmallDisk
from tests.support.waiting import poll_until
from trainvitals import Monitor
from trainvitals.trainer_plugin.delivery.spool import spool_files

TOKEN = "ingest-token-disk-full"
MiB = 1 << 20
FLOOR = 8 * MiB
RUN = "disk-full"

pytestmark = pytest.mark.slow


class Receiver:
    """A real HTTP server that keeps every JSON body POSTed to it."""

    def __init__(self) -> None:
        self.bodies: list[Any] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with receiver._lock:
                    receiver.bodies.append(body)
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/hook"
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,),
                                        daemon=True)
        self._thread.start()

    def changes(self, kind: str) -> list[tuple[str, str]]:
        """(change, severity) of every posted change of condition ``kind``, in order."""
        with self._lock:
            return [(e["change"], e["severity"]) for body in self.bodies
                    for e in body["incidents"] if e.get("kind") == kind]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[SmallDisk]:
    small = SmallDisk(tmp_path / "disk", 64 * MiB)
    try:
        small.mount()
    except CannotMount as exc:
        pytest.skip(f"no small filesystem to fill: {exc}")
    try:
        yield small
    finally:
        small.unmount()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., ServeProcess]]:
    made: list[ServeProcess] = []

    def start(data: Path, *args: str) -> ServeProcess:
        made.append(ServeProcess(token=TOKEN, data=data, log=tmp_path / "serve.log", args=args))
        return made[-1]

    yield start
    for srv in made:
        srv.stop()


def readyz(srv: ServeProcess) -> httpx.Response:
    return httpx.get(f"{srv.url}/readyz", timeout=30)


def conditions(srv: ServeProcess, **params: Any) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = srv.get("/api/conditions", **params)["conditions"]
    return found


def is_open(srv: ServeProcess, kind: str, *, run: str = "") -> bool:
    return any(c["kind"] == kind and c["run"] == run for c in conditions(srv, state="open"))


def metrics(srv: ServeProcess) -> dict[str, float]:
    """Every sample of /metrics, as ``name{labels}`` → value."""
    text = httpx.get(f"{srv.url}/metrics", timeout=30).text
    return {m.group(1): float(m.group(2)) for line in text.splitlines()
            if (m := re.fullmatch(r"([a-z_]+(?:\{.*\})?) (\S+)", line))}


def sync(spool: Path, srv: ServeProcess, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "trainvitals.cli", "sync", str(spool),
                           "--server", srv.ws_url, "--token", TOKEN, *extra],
                          capture_output=True, text=True, timeout=300)


def train(mon: Monitor, steps: range) -> None:
    for i in steps:
        mon.log_step(i, loss=float(i), grad_norm=0.5)


def test_a_disk_that_fills_mid_run_is_said_everywhere_and_nothing_is_lost_or_doubled(
        disk: SmallDisk, receiver: Receiver, serve: Callable[..., ServeProcess],
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    data = disk.path / "data"
    srv = serve(data, "--min-free-bytes", str(FLOOR), "--health-interval", "0.2",
                "--backlog-warn-s", "1", "--webhook-url", receiver.url)
    assert readyz(srv).status_code == 200
    spool = tmp_path / "spool"
    mon = Monitor(RUN, server=srv.ws_url, token=TOKEN, spool=spool, close_timeout=3)
    train(mon, range(50))
    assert mon.flush(60), mon.stats()

    # -- the disk fills: below the floor, the server refuses and says why
    disk.fill(leave=3 * MiB)
    poll_until(lambda: readyz(srv).status_code == 503, "/readyz to say not ready")
    body = readyz(srv).json()
    assert body["ready"] is False and body["checks"]["disk"]["ok"] is False
    assert body["reason"].startswith("disk: ") and f"on {data.absolute()} " in body["reason"]
    assert "new records are refused" in body["reason"]
    assert httpx.get(f"{srv.url}/healthz", timeout=30).status_code == 200  # still alive
    (full,) = [c for c in conditions(srv, state="open") if c["kind"] == "storage_full"]
    assert (full["scope"], full["severity"]) == ("server", "critical")
    assert full["headline"].startswith("storage full: new records are refused (trainers keep "
                                       "them):")

    # -- the trainer goes on: its records are refused and wait in its spool
    train(mon, range(50, 120))
    poll_until(lambda: is_open(srv, "spool_backlog", run=RUN), "spool_backlog on the run")
    run_id = next(r["id"] for r in srv.get("/api/runs")["runs"] if r["name"] == RUN)
    (behind,) = srv.get(f"/api/runs/{run_id}/conditions", state="open")["conditions"]
    assert behind["kind"] == "spool_backlog" and behind["headline"].startswith(
        "rank 0 has ") and "record(s) the server has not stored" in behind["headline"]
    seen = metrics(srv)
    assert seen["trainvitals_ready"] == 0
    assert seen["trainvitals_plugin_streams_reporting"] == 1
    assert seen["trainvitals_plugin_spool_records"] > 0
    assert seen["trainvitals_plugin_spool_bytes"] > 0
    assert seen["trainvitals_plugin_oldest_unacked_seconds"] >= 1
    assert seen['trainvitals_frames_refused_total{reason="storage_floor"}'] >= 1
    assert seen["trainvitals_disk_free_bytes"] < seen["trainvitals_disk_floor_bytes"] == FLOOR
    assert seen['trainvitals_open_conditions{kind="storage_full",scope="server",'
                'severity="critical"}'] == 1

    # -- close(): what stayed behind, why (the server's word), and how to send it
    with caplog.at_level(logging.WARNING, logger="trainvitals"):
        stats = mon.close()
    assert stats.pending == 71  # steps 50..119 and the run's end
    said = [r.getMessage() for r in caplog.records if "not acknowledged by" in r.getMessage()]
    assert len(said) == 1, caplog.text
    assert said[0].startswith(f"trainvitals: 71 record(s) of run '{RUN}' not acknowledged by "
                              f"{srv.ws_url} within 3 s (the server's last error: unavailable "
                              "— storage full: ")
    assert f"send them with: trainvitals sync {spool} --server {srv.ws_url}" in said[0]

    # -- sync while the disk is still full: says why while it waits, then gives up non-zero
    waiting = sync(spool, srv, "--timeout", "8")
    assert waiting.returncode == 1, waiting.stderr
    lines = waiting.stderr.splitlines()
    reasons = [ln for ln in lines if ln.startswith("server: unavailable — storage full: ")]
    assert len(reasons) == 1, waiting.stderr  # once per distinct message
    assert f"free on {data.absolute()}" in reasons[0] and reasons[0].endswith("; retrying in 1 s")
    pauses = [int(p) for p in re.findall(r"; retrying in (\d+) s$", waiting.stderr, re.M)]
    assert len(pauses) >= 2 and pauses == sorted(set(pauses)), waiting.stderr  # backing off
    assert any(ln.startswith("still the same (server: unavailable — storage full") for ln in lines)
    # The spool's files hold the 71 records and those of the same file already stored (a file
    # is deleted once all of it is acknowledged); sync sends them all, the server keeps each once.
    bar = re.search(r" 0/(\d+) records$", waiting.stderr, re.M)
    assert bar is not None, waiting.stderr
    held = int(bar.group(1))
    assert 71 <= held <= 122
    assert (f"trainvitals sync: {RUN} (rank 0): 0 of {held} record(s) acknowledged, {held} left "
            "(timed out after 8 s; the server's last error: unavailable — storage full: ") in \
        waiting.stderr
    assert "— run sync again" in waiting.stderr
    assert waiting.stdout.startswith("trainvitals sync: 0 record(s) of 1 stream(s) uploaded")
    assert f"; {held} left in {spool}" in waiting.stdout
    assert len(spool_files(spool)) == 1

    # -- space returns: ready again, storage_full resolved (REST and the webhook)
    disk.unfill()
    poll_until(lambda: readyz(srv).status_code == 200, "/readyz to say ready again")
    assert not is_open(srv, "storage_full")
    assert "storage_full" in [c["kind"] for c in conditions(srv, state="resolved")]
    poll_until(lambda: ("resolved", "critical") in receiver.changes("storage_full"),
               "the webhook to hear storage_full resolved")
    told = receiver.changes("storage_full")
    assert told[0][0] == "opened" and told[-1] == ("resolved", "critical")
    assert ("opened", "critical") in told or ("escalated", "critical") in told
    assert "opened" in [change for change, _ in receiver.changes("spool_backlog")]

    # -- a second sync uploads everything
    done = sync(spool, srv, "--timeout", "120")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"trainvitals sync: {held} record(s) of 1 stream(s) uploaded")
    assert "server: unavailable" not in done.stderr
    assert spool_files(spool) == {}
    poll_until(lambda: not is_open(srv, "spool_backlog", run=RUN), "spool_backlog resolved")

    # -- every step exactly once: no gap, no duplicate
    run = srv.get(f"/api/runs/{run_id}")["run"]
    assert (run["status"], run["steps"], run["dropped"]) == ("finished", 120, 0)
    (loss,) = srv.get(f"/api/runs/{run_id}/series", name="loss")["series"]
    assert loss["steps"] == list(range(120))
    assert loss["values"] == [float(i) for i in range(120)]


def test_a_commit_that_finds_the_disk_full_is_storage_full_until_space_returns(
        disk: SmallDisk, serve: Callable[..., ServeProcess], tmp_path: Path) -> None:
    """No floor: SQLite itself meets the full disk ("database or disk is full")."""
    data = disk.path / "data"
    srv = serve(data, "--min-free-bytes", "0", "--health-interval", "0.2")
    mon = Monitor("no-floor", server=srv.ws_url, token=TOKEN, spool=tmp_path / "spool",
                  close_timeout=2)
    train(mon, range(20))
    assert mon.flush(60), mon.stats()
    disk.fill(leave=0)
    # Big steps: their pages cannot fit anywhere on the full disk.
    for i in range(20, 400):
        mon.log_step(i, loss=float(i), scalars={f"s{k}": float(k) for k in range(50)})
    poll_until(lambda: readyz(srv).status_code == 503, "/readyz to say not ready")
    reason = readyz(srv).json()["reason"]
    assert "commit: the latest commit failed (" in reason and "full" in reason, reason
    poll_until(lambda: is_open(srv, "storage_full"), "storage_full")
    (full,) = [c for c in conditions(srv, state="open") if c["kind"] == "storage_full"]
    assert full["severity"] == "critical"
    assert full["headline"].startswith("storage full: commits fail (")
    assert not is_open(srv, "commits_failing")  # a full disk is storage_full, not both
    assert metrics(srv)["trainvitals_commits_failed_total"] >= 1

    disk.unfill()  # the readiness probe's commit (or the trainer's resend) succeeds again
    poll_until(lambda: readyz(srv).status_code == 200, "/readyz to say ready again")
    poll_until(lambda: not is_open(srv, "storage_full"), "storage_full resolved")
    stats = mon.close()
    assert stats.pending == 0, stats
    run_id = next(r["id"] for r in srv.get("/api/runs")["runs"] if r["name"] == "no-floor")
    (loss,) = srv.get(f"/api/runs/{run_id}/series", name="loss")["series"]
    assert loss["steps"] == list(range(400))
