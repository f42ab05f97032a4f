"""Retention by run age and store size: on a real SQLite store, and as the server's task."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from websockets.sync.client import connect

from trainvitals.protocol import Batch, Record, RunEnd, RunStart, Step, encode
from trainvitals.server import ServerThread, SQLiteStore, Store
from trainvitals.server.ingest.retention import DAY, sweep

TOKEN = "ingest-token-for-tests"  # the conftest's


def a_run(name: str, t: float, steps: int = 3, *, ended: bool = True,
          crashed: bool = False) -> list[Record]:
    """A run whose records are all stamped around ``t``, with a few series per step."""
    records: list[Record] = [RunStart(run=name, session="s", time=t)]
    records += [Step(run=name, session="s", seq=i + 1, step=i, time=t + i * 0.001,
                     loss=float(i), lr=1e-3, grad_norm=math.inf if i == 1 else 0.5,
                     scalars={"a": 1.0, "b": 2.0})
                for i in range(steps)]
    if ended:
        records.append(RunEnd(run=name, session="s", seq=steps + 1, time=t + 1,
                              status="crashed" if crashed else "finished"))
    return records


def names(store: Store) -> set[str]:
    return {r.name for r in store.runs()}


def test_age_deletes_runs_not_updated_for_retain_days_whatever_their_status(
        store: Store) -> None:
    now = 100 * DAY
    store.write(a_run("old-finished", now - 3 * DAY)
                + a_run("old-silent", now - 2.5 * DAY, ended=False)
                + a_run("recent", now - 1.5 * DAY, crashed=True)
                + a_run("running", now - 60, ended=False))
    forgotten: list[str] = []
    deleted = sweep(store, now=now, retain_days=2, retain_bytes=None, forget=forgotten.append)
    assert deleted == ["old-finished", "old-silent"]  # least recently updated first
    assert forgotten == deleted
    assert names(store) == {"recent", "running"}
    (recent,) = [r.id for r in store.runs() if r.name == "recent"]
    (loss,) = store.series(recent, "loss")
    assert loss.values == [0.0, 1.0, 2.0]
    (grad,) = store.series(recent, "grad_norm")
    assert grad.values == [0.5, math.inf, 0.5]
    assert sweep(store, now=now, retain_days=2, retain_bytes=None) == []


@pytest.fixture
def sqlite(tmp_path: Path) -> Iterator[SQLiteStore]:
    """A SQLite store for the tests that look at its tables and file."""
    s = SQLiteStore(tmp_path / "retention.sqlite3")
    s.open()
    yield s
    s.close()


def test_deleted_runs_leave_nothing_behind_and_the_name_can_come_back(
        sqlite: SQLiteStore) -> None:
    store = sqlite
    store.write(a_run("gone", 1.0))
    sweep(store, now=10 * DAY, retain_days=1, retain_bytes=None)
    conn = store._write_conn()
    for table in ("runs", "streams", "seen", "series", "points", "point_blocks", "steps",
                  "run_steps", "clips", "alerts"):
        assert conn.execute(f"SELECT count(*) FROM {table}").fetchone() == (0,), table
    # the store forgot its cached ids: the same run name (and session) starts afresh
    result = store.write(a_run("gone", 10 * DAY))
    assert len(result.accepted) == 5
    run_id = store.run_id("gone")
    assert run_id is not None
    assert store.series(run_id, "loss")[0].steps == [0, 1, 2]


def test_size_deletes_the_oldest_finished_runs_until_under_the_limit(
        store: Store) -> None:
    for i, name in enumerate(["f1", "f2", "f3"]):
        store.write(a_run(name, 1000.0 + i, steps=600))
    store.write(a_run("live", 999.0, steps=600, ended=False))  # oldest, but running
    full = store.size_bytes()
    deleted = sweep(store, now=2000.0, retain_days=None, retain_bytes=full - 1)
    assert deleted == ["f1"]
    assert store.size_bytes() < full - 1
    assert names(store) == {"f2", "f3", "live"}
    deleted = sweep(store, now=2000.0, retain_days=None, retain_bytes=1)
    assert deleted == ["f2", "f3"]
    assert names(store) == {"live"}  # running runs are never deleted for size


def test_freed_pages_are_reused_so_the_file_stops_growing(sqlite: SQLiteStore) -> None:
    store = sqlite
    store.write(a_run("first", 1.0, steps=1500))
    high_water = store.path.stat().st_size + _wal(store)
    for i in range(3):
        sweep(store, now=1e9, retain_days=None, retain_bytes=1)
        store.write(a_run(f"next-{i}", 2.0 + i, steps=1500))
    store._write_conn().execute("PRAGMA wal_checkpoint(TRUNCATE)")
    assert store.path.stat().st_size <= high_water


def _wal(store: SQLiteStore) -> int:
    wal = store.path.with_name(store.path.name + "-wal")
    return wal.stat().st_size if wal.exists() else 0


def test_server_sweeps_periodically(start_server: Callable[..., ServerThread]) -> None:
    srv = start_server(retain_days=1, retention_interval=0.05)
    now = time.time()
    with connect(f"{srv.ws_url}/ws/ingest", proxy=None,
                 additional_headers={"Authorization": f"Bearer {TOKEN}"}) as ws:
        for records in (a_run("last-week", now - 7 * DAY), a_run("today", now - 60)):
            ws.send(encode(Batch(tuple(records))))
            assert json.loads(ws.recv(timeout=10))["seq"] == records[-1].seq
    end = time.monotonic() + 10
    while "last-week" in _listed(srv):
        assert time.monotonic() < end, "retention did not delete the old run"
        time.sleep(0.05)
    assert _listed(srv) == {"today"}


def _listed(srv: ServerThread) -> set[str]:
    return {r["name"] for r in httpx.get(f"{srv.http_url}/api/runs").json()["runs"]}
