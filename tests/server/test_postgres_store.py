"""What only the PostgreSQL store must do: stay right when several replicas share one database.

The store contract itself runs on PostgreSQL through the ``store`` fixture (test_store.py and the
others); here two ``PostgresStore`` instances stand for two server replicas on one database —
writing the same streams, in turn and at the same time, opening a fresh database together,
deleting what the other has cached — and a real server stores NaN/±Inf from a real websocket
client in PostgreSQL and serves them back exactly.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from websockets.sync.client import connect

from trainvitals.cli import main
from trainvitals.protocol import (
    Batch,
    ClipEvent,
    Record,
    RunEnd,
    RunStart,
    Step,
    TensorStats,
    encode,
)
from trainvitals.server import ServerThread, Settings
from trainvitals.server.security import RedactTokens, redact_url
from trainvitals.server.store.limits import LimitExceeded, Limits
from trainvitals.server.store.postgres.schema import SCHEMA_VERSION
from trainvitals.server.store.postgres.store import PostgresStore

NAN, INF = math.nan, math.inf
TOKEN = "ingest-token-for-postgres-tests"


@pytest.fixture
def replicas(postgres_url: str) -> Iterator[Callable[..., PostgresStore]]:
    """Opens stores on the test's database, as many as a test wants; closes them after."""
    opened: list[PostgresStore] = []

    def replica(**kw: Any) -> PostgresStore:
        store = PostgresStore(postgres_url, **kw)
        store.open()
        opened.append(store)
        return store

    yield replica
    for store in opened:
        store.close()


def step(seq: int, *, run: str = "r", session: str = "s", rank: int = 0,
         loss: float | None = None) -> Step:
    return Step(run=run, session=session, rank=rank, seq=seq, step=seq - 1,
                time=100.0 + seq, loss=float(seq) if loss is None else loss)


def count(url: str, sql: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute(sql).fetchone()
    assert row is not None
    return int(row[0])


def in_threads(*jobs: Callable[[], Any]) -> list[Any]:
    """Run the jobs at the same moment, one thread each; their results, or raise their error."""
    barrier = threading.Barrier(len(jobs))
    results: list[Any] = [None] * len(jobs)
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            barrier.wait()
            results[i] = jobs[i]()
        except BaseException as exc:  # handed to the test below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    if errors:
        raise errors[0]
    return results


# ------------------------------------------------------------------------- two replicas, one stream


def test_two_replicas_store_each_record_once_and_ack_what_the_database_holds(
        replicas: Callable[..., PostgresStore], postgres_url: str) -> None:
    a, b = replicas(), replicas()
    key = ("r", 0, "s")
    assert a.write([RunStart(run="r", session="s"), step(1), step(2)]).top_seq == {key: 2}
    # b has cached nothing: the resent seq 2 is a duplicate (its new value must not win)
    second = b.write([step(2, loss=999.0), step(3), step(5)])
    assert second.accepted == [step(3), step(5)]
    assert second.top_seq == {key: 3}  # 4 is missing
    # a's own mark says 2; what b stored moves it on, and 4 fills the gap up to 5
    third = a.write([step(4), step(3, loss=999.0)])
    assert third.accepted == [step(4)]
    assert third.top_seq == {key: 5}
    assert b.write([step(5, loss=999.0), step(6)]).top_seq == {key: 6}

    run_id = a.run_id("r")
    assert run_id is not None
    (loss,) = b.series(run_id, "loss")
    assert (loss.steps, loss.values) == ([0, 1, 2, 3, 4, 5], [1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    assert count(postgres_url, "SELECT count(*) FROM seen") == 7
    assert count(postgres_url, "SELECT count(*) FROM streams") == 1
    assert (a.runs()[0].steps, a.runs()[0].last_step) == (6, 5)


def test_two_replicas_writing_the_same_stream_at_once_store_every_record_once(
        replicas: Callable[..., PostgresStore], postgres_url: str) -> None:
    records: list[Record] = [RunStart(run="r", session="s"), *(step(i) for i in range(1, 400))]
    stores = [replicas(), replicas()]

    def send(store: PostgresStore, size: int) -> tuple[list[Record], list[int]]:
        """Everything, in overlapping batches of ``size``; what was accepted, the acks."""
        accepted, acks = [], []
        for i in range(0, len(records), size):
            result = store.write(records[max(0, i - 3):i + size])  # each batch repeats 3
            accepted += result.accepted
            acks.append(result.top_seq.get(("r", 0, "s"), -1))
        return accepted, acks

    (got_a, acks_a), (got_b, acks_b) = in_threads(lambda: send(stores[0], 7),
                                                  lambda: send(stores[1], 11))

    assert sorted(r.seq for r in got_a + got_b) == list(range(400))  # each exactly once
    for acks in (acks_a, acks_b):
        assert acks == sorted(acks) and acks[-1] == 399
    run_id = stores[0].run_id("r")
    assert run_id is not None
    (loss,) = stores[1].series(run_id, "loss")
    assert loss.steps == list(range(399))
    assert loss.values == [float(i) for i in range(1, 400)]
    assert count(postgres_url, "SELECT count(*) FROM points") == 399


def test_ranks_ending_on_two_replicas_at_once_finish_the_run(
        replicas: Callable[..., PostgresStore]) -> None:
    """Each replica would see the other rank still open unless writes of one run take turns."""
    a, b = replicas(), replicas()

    def end(store: PostgresStore, rank: int, run: str) -> None:
        store.write([RunEnd(run=run, session=f"s{rank}", rank=rank, seq=2, time=200.0)])

    for i in range(20):
        for store, rank in ((a, 0), (b, 1)):
            store.write([RunStart(run=f"run-{i}", session=f"s{rank}", rank=rank, world_size=2),
                         Step(run=f"run-{i}", session=f"s{rank}", rank=rank, seq=1, step=0)])
        in_threads(partial(end, a, 0, f"run-{i}"), partial(end, b, 1, f"run-{i}"))
    runs = a.runs()
    assert len(runs) == 20
    assert {(r.status, tuple(r.ranks)) for r in runs} == {("finished", (0, 1))}


# ------------------------------------------------------------------------------- limits and deletes


def test_max_runs_counts_the_runs_every_replica_created(
        replicas: Callable[..., PostgresStore]) -> None:
    a, b = replicas(limits=Limits(max_runs=2)), replicas(limits=Limits(max_runs=2))
    a.write([RunStart(run="x", session="s")])
    b.write([RunStart(run="y", session="s")])
    with pytest.raises(LimitExceeded, match=r"cannot create run 'z'.*at most 2 runs"):
        a.write([step(1, run="x"), RunStart(run="z", session="s")])
    assert {r.name for r in b.runs()} == {"x", "y"}
    assert a.runs()[0].steps == 0 and a.runs()[1].steps == 0  # nothing of that write
    assert len(a.write([step(1, run="x")]).accepted) == 1


def test_max_runs_holds_when_replicas_create_runs_at_once(
        replicas: Callable[..., PostgresStore]) -> None:
    stores = [replicas(limits=Limits(max_runs=5)) for _ in range(2)]

    def create(store: PostgresStore, prefix: str) -> int:
        made = 0
        for i in range(5):
            try:
                store.write([RunStart(run=f"{prefix}{i}", session="s")])
                made += 1
            except LimitExceeded:
                pass
        return made

    made = in_threads(lambda: create(stores[0], "a"), lambda: create(stores[1], "b"))
    assert sum(made) == 5
    assert len(stores[0].runs()) == 5


def test_max_series_per_run_counts_what_other_replicas_added(
        replicas: Callable[..., PostgresStore]) -> None:
    a, b = replicas(limits=Limits(max_series_per_run=3)), replicas(
        limits=Limits(max_series_per_run=3))
    a.write([RunStart(run="r", session="s"), step(1)])  # loss
    b.write([Step(run="r", session="s2", seq=0, step=0, scalars={"x": 1.0, "y": 2.0})])
    with pytest.raises(LimitExceeded, match="cannot add series 'scalar/z' to run 'r'"):
        a.write([Step(run="r", session="s", seq=2, step=1, loss=1.0, scalars={"z": 1.0})])
    run_id = a.run_id("r")
    assert run_id is not None
    assert sorted(s.name for s in a.series_list(run_id)) == ["loss", "scalar/x", "scalar/y"]


def test_a_run_deleted_by_another_replica_is_created_afresh_without_orphans(
        replicas: Callable[..., PostgresStore], postgres_url: str) -> None:
    a, b = replicas(), replicas()
    a.write([RunStart(run="r", session="s"), step(1), step(2)])  # a caches the ids
    old = a.run_id("r")
    assert old is not None
    b.delete_run(old)

    result = a.write([step(3), step(4)])
    assert result.accepted == [step(3), step(4)]
    assert result.top_seq == {}  # seq 0 of the stream is gone with the run
    new = b.run_id("r")
    assert new is not None and new != old
    (loss,) = b.series(new, "loss")
    assert (loss.steps, loss.values) == ([2, 3], [3.0, 4.0])
    for table, parent in (("points", "series_id IN (SELECT id FROM series)"),
                          ("seen", "stream_id IN (SELECT id FROM streams)"),
                          ("steps", "run_id IN (SELECT id FROM runs)")):
        assert count(postgres_url, f"SELECT count(*) FROM {table} WHERE NOT {parent}") == 0


def test_size_shrinks_when_a_run_is_deleted_and_disk_bytes_cover_it(
        replicas: Callable[..., PostgresStore]) -> None:
    store = replicas()
    for run in ("a", "b"):
        store.write([RunStart(run=run, session="s")] + [
            Step(run=run, session="s", seq=i, step=i, loss=float(i), scalars={"x": 1.0})
            for i in range(1, 2000)])
    full = store.size_bytes()
    assert 0 < full <= store.disk_bytes()
    store.delete_run(store.run_id("a") or 0)
    half = store.size_bytes()
    assert 0.3 * full < half < 0.7 * full


# ------------------------------------------------------------------------------------------- schema


def test_replicas_opening_a_fresh_database_together_all_succeed(postgres_url: str) -> None:
    stores = [PostgresStore(postgres_url) for _ in range(4)]
    try:
        in_threads(*(s.open for s in stores))
    finally:
        for s in stores:
            s.close()
    assert count(postgres_url, "SELECT count(*) FROM meta WHERE key = 'schema_version'") == 1


def with_password(url: str) -> str:
    """The same database with a password in the URL (the test cluster trusts 127.0.0.1)."""
    return url.replace("postgres@", "postgres:hunter2secret@")


def test_another_schema_version_is_a_clear_error_without_the_password(
        postgres_url: str) -> None:
    first = PostgresStore(postgres_url)
    first.open()
    first.close()
    with psycopg.connect(postgres_url) as conn:
        conn.execute("UPDATE meta SET value = '999' WHERE key = 'schema_version'")

    later = PostgresStore(with_password(postgres_url))
    with pytest.raises(RuntimeError, match=rf"has schema version 999; this server needs "
                                           rf"{SCHEMA_VERSION}\. Use a new database") as err:
        later.open()
    later.close()
    assert "hunter2secret" not in str(err.value) and "[redacted]" in str(err.value)
    assert "hunter2secret" not in repr(later)


def test_another_schema_version_is_refused_before_touching_the_database(
        postgres_url: str) -> None:
    with psycopg.connect(postgres_url) as conn:
        conn.execute("CREATE TABLE meta (key text PRIMARY KEY, value text NOT NULL)")
        conn.execute("INSERT INTO meta VALUES ('schema_version', '0')")
        conn.execute("CREATE TABLE alerts (id bigint PRIMARY KEY, what text)")
    store = PostgresStore(postgres_url)
    with pytest.raises(RuntimeError, match="has schema version 0"):
        store.open()
    store.close()
    with psycopg.connect(postgres_url) as conn:
        tables = {name for (name,) in conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
    assert tables == {"meta", "alerts"}


def test_an_unreachable_database_is_named_without_its_password(postgres_url: str) -> None:
    dead = with_password(postgres_url).rsplit("/", 1)[0] + "/no_such_database"
    store = PostgresStore(dead)
    with pytest.raises(RuntimeError, match="cannot connect to postgresql://postgres:"
                                           r"\[redacted\]@127\.0\.0\.1") as err:
        store.open()
    assert "hunter2secret" not in str(err.value)
    assert err.value.__suppress_context__  # the driver's own error is not chained to it


# ------------------------------------------------------------------------------------ a real server


def test_a_server_on_postgres_stores_and_serves_nan_and_inf_exactly(
        postgres_url: str, tmp_path: Path) -> None:
    stats = TensorStats(count=4, nan=1, posinf=1, neginf=1, min=-INF, max=INF, mean=NAN,
                        absmax=INF, dtype="float16")
    clip = ClipEvent(raw=NAN, threshold=INF, action="passed", reason="nan",
                     components={"a": -INF, "b": NAN})
    records: list[Record] = [
        RunStart(run="nonfinite", session="s", time=1.0),
        Step(run="nonfinite", session="s", seq=1, step=0, time=2.0, loss=NAN, grad_norm=INF,
             scalars={"m": -INF}, tensors={"z": stats}, clip=clip),
        Step(run="nonfinite", session="s", seq=2, step=1, time=3.0, loss=INF, grad_norm=-0.0,
             scalars={"m": 5e-324}),
        Step(run="nonfinite", session="s", seq=3, step=2, time=4.0, loss=-INF,
             grad_norm=1.7976931348623157e308, scalars={"m": NAN}),
    ]
    settings = Settings(port=0, data_dir=tmp_path / "data", database_url=postgres_url,
                        ingest_token=TOKEN, log_alerts=False)
    with ServerThread(settings) as srv:
        with connect(f"{srv.ws_url}/ws/ingest", proxy=None, open_timeout=10,
                     additional_headers={"Authorization": f"Bearer {TOKEN}"}) as ws:
            ws.send(encode(Batch(tuple(records))))
            assert json.loads(ws.recv(timeout=10))["seq"] == 3
        (run,) = httpx.get(f"{srv.http_url}/api/runs").json()["runs"]
        url = f"{srv.http_url}/api/runs/{run['id']}"

        def values(name: str) -> list[Any]:
            (series,) = httpx.get(f"{url}/series", params={"name": name}).json()["series"]
            return list(series["values"])

        assert values("loss") == ["NaN", "Infinity", "-Infinity"]
        assert values("grad_norm") == ["Infinity", 0.0, 1.7976931348623157e308]
        assert values("scalar/m") == ["-Infinity", 5e-324, "NaN"]
        assert values("tensor/z/mean") == ["NaN"]
        assert values("tensor/z/min") == ["-Infinity"]
        (served_clip,) = httpx.get(f"{url}/clips").json()["clips"]
        assert (served_clip["raw"], served_clip["threshold"]) == ("NaN", "Infinity")
        assert served_clip["components"] == {"a": "-Infinity", "b": "NaN"}
        metrics = httpx.get(f"{srv.http_url}/metrics").text
        assert "trainvitals_store_bytes 0.0" not in metrics
        assert "\ntrainvitals_store_bytes " in metrics

    assert not (tmp_path / "data" / "trainvitals.sqlite3").exists()  # all of it in PostgreSQL
    with psycopg.connect(postgres_url) as conn:  # natively: NaN is a value, never NULL
        stored = conn.execute("SELECT p.value FROM points p JOIN series s ON s.id = p.series_id "
                              "WHERE s.name = 'loss' ORDER BY p.step").fetchall()
    assert math.isnan(stored[0][0]) and [v for (v,) in stored[1:]] == [INF, -INF]


# --------------------------------------------------------------------------------- around the store


def test_the_server_imports_psycopg_only_when_a_database_url_is_set(tmp_path: Path) -> None:
    code = ("import sys\n"
            "from trainvitals.server import Settings, create_app\n"
            f"create_app(Settings(data_dir={str(tmp_path)!r}))\n"
            "assert 'psycopg' not in sys.modules, 'psycopg imported'\n"
            "create_app(Settings(database_url='postgresql://u@127.0.0.1:1/x'))\n"
            "assert 'psycopg' in sys.modules\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr


def test_database_url_passwords_are_redacted_in_logs() -> None:
    import logging

    record = logging.LogRecord("uvicorn.error", logging.INFO, __file__, 1,
                               "connecting to %s", ("postgresql://tv:s3cret@db:5432/tv",), None)
    RedactTokens().filter(record)
    assert record.getMessage() == "connecting to postgresql://tv:[redacted]@db:5432/tv"
    assert redact_url("postgres://tv@db/tv") == "postgres://tv@db/tv"  # no password: unchanged


def test_export_refuses_a_postgres_server_instead_of_exporting_nothing(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TRAINVITALS_DATABASE_URL", "postgresql://tv:pw@db/tv")
    with pytest.raises(SystemExit, match="works on a SQLite data directory only"):
        main(["export", "-o", str(tmp_path / "out.jsonl")])
    with pytest.raises(SystemExit, match="works on a SQLite data directory only"):
        main(["import", str(tmp_path / "in.jsonl")])


def test_a_version_1_database_gains_the_incidents_table_in_place(postgres_url: str) -> None:
    first = PostgresStore(postgres_url)
    first.open()
    first.close()
    with psycopg.connect(postgres_url) as conn:  # what a version-1 server left
        conn.execute("DROP TABLE incidents")
        conn.execute("DROP TABLE run_steps")  # added in version 3
        conn.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    later = PostgresStore(postgres_url)
    later.open()
    assert later.incidents() == []
    later.close()
    assert count(postgres_url, "SELECT count(*) FROM meta WHERE key = 'schema_version' "
                               f"AND value = '{SCHEMA_VERSION}'") == 1
