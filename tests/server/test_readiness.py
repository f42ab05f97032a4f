"""/healthz, /readyz, the server's conditions and their /metrics gauges, on real servers
(uvicorn on a free port, SQLite in a temporary directory) with real trouble: a free-space
floor above what the disk has, and a second SQLite connection that really holds the write
lock. A disk that really fills up mid-run: tests/e2e/test_disk_full.py."""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
from websockets.sync.client import ClientConnection, connect

from tests.support.waiting import poll_until
from trainvitals.protocol import Batch, Record, RunStart, Step, encode
from trainvitals.protocol.messages import Backlog
from trainvitals.server import ServerThread

INGEST_TOKEN = "ingest-token-for-tests"  # tests/server/conftest.py
StartServer = Callable[..., ServerThread]


@contextmanager
def ingest(srv: ServerThread) -> Iterator[ClientConnection]:
    with connect(f"{srv.ws_url}/ws/ingest", additional_headers={
            "Authorization": f"Bearer {INGEST_TOKEN}"}, open_timeout=10, proxy=None) as ws:
        yield ws


def send(ws: ClientConnection, *records: Record, backlog: Backlog | None = None) -> Any:
    ws.send(encode(Batch(tuple(records), 0, backlog)))
    return json.loads(ws.recv(timeout=30))


def get(srv: ServerThread, path: str, **params: Any) -> httpx.Response:
    return httpx.get(f"{srv.http_url}{path}", params=params, timeout=30)


def conditions(srv: ServerThread, **params: Any) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = get(srv, "/api/conditions", **params).json()["conditions"]
    return found


def kinds(srv: ServerThread, **params: Any) -> list[tuple[str, str]]:
    return [(c["kind"], c["severity"]) for c in conditions(srv, **params)]


def metric(srv: ServerThread, name: str, **labels: str) -> float:
    """One sample of /metrics (Prometheus text), by name and labels."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in get(srv, "/metrics").text.splitlines():
        m = re.fullmatch(r"([a-z_]+)(?:\{(.*)\})? (\S+)", line)
        if m and m.group(1) == name and ",".join(sorted((m.group(2) or "").split(","))
                                                  if m.group(2) else []) == want:
            return float(m.group(3))
    raise AssertionError(f"no sample {name}{{{want}}} in /metrics")


def test_a_healthy_server_is_live_and_ready_with_every_check_passing(server: ServerThread) -> None:
    ready = get(server, "/readyz")
    assert ready.status_code == 200
    body = ready.json()
    assert (body["status"], body["ready"], body["conditions"]) == ("ready", True, [])
    assert "reason" not in body
    assert {name: check["ok"] for name, check in body["checks"].items()} == {
        "disk": True, "database": True, "commit": True}
    assert "free of" in body["checks"]["disk"]["detail"]
    live = get(server, "/healthz")
    assert live.status_code == 200 and live.json()["status"] == "ok" and live.json()["ready"]
    assert metric(server, "trainvitals_ready") == 1
    assert metric(server, "trainvitals_ready_check", check="disk") == 1
    assert metric(server, "trainvitals_disk_free_bytes") > 0
    assert metric(server, "trainvitals_disk_floor_bytes") == 256 << 20
    assert metric(server, "trainvitals_open_conditions", scope="server", kind="storage_full",
                  severity="critical") == 0
    assert conditions(server) == []


def test_below_the_floor_the_server_is_live_not_ready_and_refuses_frames_saying_why(
        start_server: StartServer) -> None:
    """A floor larger than the whole disk: refusing from the first measurement."""
    srv = start_server(min_free_bytes=1 << 60, health_interval=0.2)
    ready = get(srv, "/readyz")
    assert ready.status_code == 503
    body = ready.json()
    assert (body["status"], body["ready"]) == ("not ready", False)
    data_dir = str(srv.settings.data_dir.absolute())
    assert body["reason"].startswith("disk: ") and f" on {data_dir} " in body["reason"]
    assert "new records are refused — free space: delete old runs" in body["reason"]
    assert body["checks"]["disk"]["ok"] is False and body["checks"]["commit"]["ok"] is True
    (banner,) = body["conditions"]
    assert (banner["kind"], banner["scope"], banner["severity"], banner["run"]) == (
        "storage_full", "server", "critical", "")
    assert banner["headline"].startswith("storage full: new records are refused")
    assert banner["remedy"].startswith("free space on the data directory's disk")
    assert banner["facts"]["floor_bytes"] == 1 << 60 and banner["facts"]["path"] == data_dir

    live = get(srv, "/healthz")  # liveness: restarting it would not free the disk
    assert live.status_code == 200 and live.json()["ready"] is False

    with ingest(srv) as ws:
        error = send(ws, RunStart(run="refused", session="s"))
    assert (error["type"], error["code"], error["fatal"]) == ("error", "unavailable", False)
    assert error["message"].startswith("storage full: ") and f"free on {data_dir}" in \
        error["message"]
    assert "nothing of this frame was stored" in error["message"]
    assert get(srv, "/api/runs").json()["runs"] == []
    assert metric(srv, "trainvitals_ready") == 0
    assert metric(srv, "trainvitals_ready_check", check="disk") == 0
    assert metric(srv, "trainvitals_frames_refused_total", reason="storage_floor") == 1
    assert metric(srv, "trainvitals_commits_failed_total") == 0  # nothing was even tried
    assert metric(srv, "trainvitals_open_conditions", scope="server", kind="storage_full",
                  severity="critical") == 1
    assert kinds(srv, scope="server", state="open") == [("storage_full", "critical")]


def test_a_locked_database_fails_commits_until_the_lock_goes_then_a_probe_makes_it_ready(
        start_server: StartServer) -> None:
    srv = start_server(health_interval=0.2)
    blocker = sqlite3.connect(srv.settings.db_path, isolation_level=None)
    try:
        with ingest(srv) as ws:
            assert send(ws, RunStart(run="locked", session="s"))["type"] == "ack"
            blocker.execute("BEGIN IMMEDIATE")  # holds the write lock past the busy timeout
            error = send(ws, Step(run="locked", session="s", seq=1, step=0, loss=1.0))
            assert (error["code"], error["fatal"]) == ("unavailable", False)
            assert "database is locked" in error["message"]
            not_ready = get(srv, "/readyz")
            assert not_ready.status_code == 503
            assert not_ready.json()["reason"] == (
                "commit: the latest commit failed (OperationalError: database is locked); "
                "nothing is stored until one succeeds")
            assert kinds(srv, state="open") == [("commits_failing", "critical")]
            (c,) = conditions(srv, state="open")
            assert c["headline"].startswith("commits fail (OperationalError: database is "
                                            "locked): new records are refused")
            assert metric(srv, "trainvitals_commits_failed_total") >= 1
            assert metric(srv, "trainvitals_frames_refused_total", reason="commit_failed") >= 1
            blocker.execute("ROLLBACK")
            # No trainer sends anything: the readiness probe's commit finds it works again.
            poll_until(lambda: get(srv, "/readyz").status_code == 200, "ready again")
            assert kinds(srv, state="open") == []
            assert kinds(srv, state="resolved") == [("commits_failing", "critical")]
            assert send(ws, Step(run="locked", session="s", seq=1, step=0,
                                 loss=1.0))["seq"] == 1
    finally:
        blocker.close()


def test_a_trainer_reporting_an_old_backlog_raises_spool_backlog_on_its_run(
        start_server: StartServer) -> None:
    srv = start_server(backlog_warn_s=30)
    with ingest(srv) as ws:
        # The frame holds seq 0..1; the trainer's spool holds up to seq 40, the oldest 45 s old.
        ack = send(ws, RunStart(run="behind", session="s"),
                   Step(run="behind", session="s", seq=1, step=0, loss=1.0),
                   backlog=Backlog(records=41, bytes=41_000, max_bytes=1 << 20, oldest_age=45.0,
                                   last_seq=40))
        assert ack["seq"] == 1
        assert metric(srv, "trainvitals_plugin_streams_reporting") == 1
        assert metric(srv, "trainvitals_plugin_spool_records") == 39  # 41 less the 2 stored
        assert metric(srv, "trainvitals_plugin_spool_bytes") == 39_000
        assert metric(srv, "trainvitals_plugin_oldest_unacked_seconds") >= 45
        (c,) = conditions(srv, scope="run", state="open")
        assert (c["kind"], c["run"], c["severity"], c["rank"]) == (
            "spool_backlog", "behind", "warning", 0)
        assert c["headline"].startswith("rank 0 has 39 record(s) the server has not stored")
        run_id = get(srv, "/api/runs").json()["runs"][0]["id"]
        on_run = get(srv, f"/api/runs/{run_id}/conditions").json()["conditions"]
        assert [(x["kind"], x["run_id"]) for x in on_run] == [("spool_backlog", run_id)]
        assert get(srv, "/readyz").status_code == 200  # a trainer's trouble, not the server's
        assert metric(srv, "trainvitals_open_conditions", scope="run", kind="spool_backlog",
                      severity="warning") == 1
        # The rest arrives: nothing left, resolved.
        rest = [Step(run="behind", session="s", seq=i, step=i - 1, loss=1.0) for i in range(2, 41)]
        assert send(ws, *rest, backlog=Backlog(39, 39_000, 1 << 20, 46.0, 40))["seq"] == 40
        assert kinds(srv, scope="run", state="open") == []
        assert kinds(srv, scope="run", state="resolved") == [("spool_backlog", "warning")]
        assert get(srv, f"/api/runs/{run_id}/conditions",
                   state="resolved").json()["conditions"][0]["state"] == "resolved"
    assert get(srv, "/api/runs/999/conditions").status_code == 404
