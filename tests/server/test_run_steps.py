"""The runs list's step counts (``run_steps``, ``trainvitals.server.store.run_steps``): equal to
what ``steps`` holds after every write, on both stores, and read without scanning ``steps``.

The truth is counted twice: from the ``steps`` table itself, and from a model of the records
(a record counts once per (stream, seq); the newest record of a (rank, step) sets its time).
"""

from __future__ import annotations

import io
import logging
import math
import random
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from trainvitals.protocol import Record, RunEnd, RunStart, Step
from trainvitals.server import SQLiteStore, Store
from trainvitals.server.ingest.retention import DAY, sweep
from trainvitals.server.store.limits import LimitExceeded, Limits
from trainvitals.server.store.run_steps import Pending, merge
from trainvitals.server.store.sqlite.schema import SCHEMA_VERSION
from trainvitals.server.store.transfer import export_runs, import_runs

Counts = dict[tuple[str, int], tuple[int, float, float]]  # (run, rank) -> steps, first, last


def _sql(store: Store, sql: str) -> str:
    return sql if isinstance(store, SQLiteStore) else sql.replace("?", "%s")


def rows(store: Store, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """A query on the store's own database (either kind), on a reading connection."""
    conn: Any = store._read_conn()  # type: ignore[attr-defined]
    return [tuple(r) for r in conn.execute(_sql(store, sql), params).fetchall()]


def summary(store: Store) -> Counts:
    """What run_steps holds."""
    return {(name, rank): (n, t0, t1) for name, rank, n, t0, t1 in rows(
        store, "SELECT r.name, s.rank, s.steps, s.first_time, s.last_time FROM run_steps s "
               "JOIN runs r ON r.id = s.run_id")}


def counted(store: Store) -> Counts:
    """What run_steps should hold: counted from steps."""
    return {(name, rank): (n, t0, t1) for name, rank, n, t0, t1 in rows(
        store, "SELECT r.name, s.rank, count(*), min(s.time), max(s.time) FROM steps s "
               "JOIN runs r ON r.id = s.run_id GROUP BY r.name, s.rank")}


def listed(store: Store) -> dict[str, tuple[int, float | None, float | None]]:
    """What the runs list (and the one-run read) shows."""
    out = {r.name: (r.steps, r.first_time, r.last_time) for r in store.runs()}
    for r in store.runs():
        one = store.run(r.id)
        assert one is not None and one == r
    return out


class Model:
    """The records' meaning, kept in Python: (run, rank, step) -> time of its newest record."""

    def __init__(self) -> None:
        self.seen: set[tuple[str, int, str, int]] = set()
        self.times: dict[tuple[str, int, int], float] = {}

    def write(self, records: Sequence[Record]) -> None:
        for r in records:
            key = (r.run, r.rank, r.session, r.seq)
            if key in self.seen:
                continue
            self.seen.add(key)
            if isinstance(r, Step):
                self.times[(r.run, r.rank, r.step)] = r.time

    def counts(self) -> Counts:
        out: dict[tuple[str, int], list[float]] = {}
        for (run, rank, _), t in self.times.items():
            out.setdefault((run, rank), []).append(t)
        return {k: (len(ts), min(ts), max(ts)) for k, ts in out.items()}

    def listed(self) -> dict[str, tuple[int, float, float]]:
        out: dict[str, tuple[int, float, float]] = {}
        for (run, _), (n, t0, t1) in self.counts().items():
            m, a, b = out.get(run, (0, math.inf, -math.inf))
            out[run] = (m + n, min(a, t0), max(b, t1))
        return out


def check(store: Store, model: Model) -> None:
    assert summary(store) == counted(store) == model.counts()
    shown = listed(store)
    for name, row in model.listed().items():
        assert shown[name] == row, name
    for name in set(shown) - set(model.listed()):
        assert shown[name] == (0, None, None), name  # a run without steps


def st(run: str, session: str, seq: int, step: int, time: float, rank: int = 0) -> Step:
    return Step(run=run, session=session, rank=rank, seq=seq, step=step, time=time,
                loss=float(step))


# ------------------------------------------------------------------------------ the merge


def test_merge_counts_added_rows_and_recounts_when_a_replaced_time_was_an_extreme() -> None:
    assert merge(None, Pending(added=3, lo=1.0, hi=5.0)) == (3, 1.0, 5.0)
    assert merge((10, 1.0, 9.0), Pending(added=2, lo=9.5, hi=11.0)) == (12, 1.0, 11.0)
    # a time between the extremes replaced: still exact without counting
    assert merge((10, 1.0, 9.0), Pending(lo=4.0, hi=4.0, gone_lo=3.0, gone_hi=3.0)) == (
        10, 1.0, 9.0)
    # the first time (1.0) replaced by a later one: the new first is unknown here
    assert merge((10, 1.0, 9.0), Pending(lo=4.0, hi=4.0, gone_lo=1.0, gone_hi=1.0)) is None
    # the last replaced by an earlier one
    assert merge((10, 1.0, 9.0), Pending(lo=4.0, hi=4.0, gone_lo=9.0, gone_hi=9.0)) is None
    # ... but replaced by a later one, the new last is known
    assert merge((10, 1.0, 9.0), Pending(lo=12.0, hi=12.0, gone_lo=9.0, gone_hi=9.0)) == (
        10, 1.0, 12.0)
    assert merge(None, Pending(lo=2.0, hi=2.0, gone_lo=1.0, gone_hi=1.0)) is None


# ------------------------------------------------------------------------------ both stores


def test_resends_and_duplicates_count_once(store: Store) -> None:
    model = Model()
    batch: list[Record] = [RunStart(run="a", session="s", time=1.0),
                           *[st("a", "s", i, i - 1, 1.0 + i) for i in range(1, 21)]]
    for records in (batch, batch, batch[5:12], batch[:3] + batch[3:4] * 3, batch[::-1]):
        store.write(records)
        model.write(records)
        check(store, model)
    assert listed(store)["a"] == (20, 2.0, 21.0)


def test_a_step_written_again_replaces_its_time_and_the_extremes_follow(store: Store) -> None:
    model = Model()
    writes: list[list[Record]] = [
        [st("a", "s1", 0, 0, 10.0), st("a", "s1", 1, 1, 20.0), st("a", "s1", 2, 2, 30.0)],
        # a resumed run redoes step 0 later: the first time (10) is gone
        [st("a", "s2", 0, 0, 40.0)],
        # its clock was off: step 2 again, earlier than every other, and step 0 back to 35
        [st("a", "s3", 0, 2, 5.0), st("a", "s3", 1, 0, 35.0)],
        # the same step three times in one write, the last one lowest
        [st("a", "s4", 0, 3, 50.0), st("a", "s4", 1, 3, 60.0), st("a", "s4", 2, 3, 45.0)],
        # a step of the same write rewritten after a run start between them (PostgreSQL
        # writes the steps on either side of it in separate statements)
        [st("a", "s5", 0, 4, 70.0), RunStart(run="a", session="s5", seq=1, time=70.0),
         st("a", "s5", 2, 4, 1.0)],
        # the same time again: nothing changes
        [st("a", "s6", 0, 4, 1.0)],
    ]
    expected = [(3, 10.0, 30.0), (3, 20.0, 40.0), (3, 5.0, 35.0), (4, 5.0, 45.0),
                (5, 1.0, 45.0), (5, 1.0, 45.0)]
    for records, want in zip(writes, expected, strict=True):
        store.write(records)
        model.write(records)
        check(store, model)
        assert listed(store)["a"] == want


def test_ranks_and_runs_are_counted_apart_and_summed_in_the_list(store: Store) -> None:
    model = Model()
    for rank in (3, 0, 1):
        records: list[Record] = [RunStart(run="multi", session=f"s{rank}", rank=rank, time=1.0)]
        records += [st("multi", f"s{rank}", i + 1, i, 100.0 * rank + i, rank=rank)
                    for i in range(10 + rank)]
        store.write(records)
        model.write(records)
    store.write([RunStart(run="empty", session="e", time=2.0)])
    model.write([RunStart(run="empty", session="e", time=2.0)])
    check(store, model)
    assert listed(store) == {"multi": (10 + 11 + 13, 0.0, 312.0), "empty": (0, None, None)}
    assert sorted(k for k in summary(store) if k[0] == "multi") == [
        ("multi", 0), ("multi", 1), ("multi", 3)]


def test_random_writes_with_resends_resumes_and_ranks_match_the_truth(store: Store) -> None:
    rng = random.Random(15)
    model = Model()
    sent: list[Record] = []
    sessions: dict[tuple[str, int], tuple[str, int]] = {}  # (run, rank) -> session, next seq
    resends = 0
    for _ in range(40):
        batch: list[Record] = []
        for _ in range(rng.randint(1, 30)):
            if sent and rng.random() < 0.2:
                batch.append(rng.choice(sent))  # a resend
                resends += 1
                continue
            run, rank = rng.choice(["a", "b"]), rng.randint(0, 2)
            session, seq = sessions.get((run, rank), (f"{run}{rank}-0", 0))
            if rng.random() < 0.05:  # a resumed process: new session, seq from 0
                session, seq = f"{run}{rank}-{rng.randint(1, 10**6)}", 0
            if rng.random() < 0.1:
                record: Record = RunStart(run=run, session=session, rank=rank, seq=seq,
                                          time=rng.uniform(0, 100))
            else:  # few step numbers: many are written again, at earlier or later times
                record = st(run, session, seq, rng.randint(0, 40), rng.uniform(0, 100),
                            rank=rank)
            sessions[(run, rank)] = (session, seq + 1)
            batch.append(record)
            sent.append(record)
        store.write(batch)
        model.write(batch)
        check(store, model)
    # what the property is about happened: resends, both runs, and every rank of them
    assert resends > 0 and sorted(listed(store)) == ["a", "b"]
    assert {rank for (_, rank) in model.counts()} == {0, 1, 2}


def test_a_failed_write_changes_no_count_and_leaves_nothing_pending(store: Store) -> None:
    model = Model()
    first: list[Record] = [st("a", "s", 0, 0, 1.0), st("a", "s", 1, 1, 2.0)]
    store.write(first)
    model.write(first)
    store.limits = Limits(max_series_per_run=2)  # type: ignore[attr-defined]
    too_many = [st("a", "s", 2, 2, 3.0),
                Step(run="a", session="s", seq=3, step=3, time=4.0, loss=1.0, lr=0.1,
                     grad_norm=2.0)]
    with pytest.raises(LimitExceeded):
        store.write(too_many)
    check(store, model)
    store.limits = Limits()  # type: ignore[attr-defined]
    later: list[Record] = [st("a", "s", 4, 9, 9.0)]
    store.write(later)
    model.write(later)
    check(store, model)  # what the failed write collected was not added now


def test_delete_run_and_retention_take_the_counts_with_the_run(store: Store) -> None:
    model = Model()
    for name, t in (("old", 1.0), ("kept", 5 * DAY), ("gone", 2.0)):
        records: list[Record] = [RunStart(run=name, session="s", time=t)]
        records += [st(name, "s", i + 1, i, t + i) for i in range(5)]
        records.append(RunEnd(run=name, session="s", seq=6, time=t + 10))
        store.write(records)
        model.write(records)
    gone = store.run_id("gone")
    assert gone is not None
    store.delete_run(gone)
    assert sweep(store, now=6 * DAY, retain_days=2, retain_bytes=None) == ["old"]
    model.times = {k: v for k, v in model.times.items() if k[0] == "kept"}
    check(store, model)
    assert rows(store, "SELECT count(*) FROM run_steps WHERE run_id = ?", gone) == [(0,)]
    # the name comes back as a new run, counted from nothing
    again: list[Record] = [RunStart(run="gone", session="t", time=9 * DAY),
                           st("gone", "t", 1, 0, 9 * DAY)]
    store.write(again)
    model.write(again)
    check(store, model)
    assert listed(store)["gone"] == (1, 9 * DAY, 9 * DAY)


def test_reopening_the_store_keeps_the_counts(store_factory: Any) -> None:
    first = store_factory()
    first.open()
    model = Model()
    records: list[Record] = [st("a", "s", i, i, float(i)) for i in range(7)]
    first.write(records)
    model.write(records)
    first.close()
    again = store_factory()
    again.open()
    try:
        check(again, model)
        assert listed(again)["a"] == (7, 0.0, 6.0)  # as written before the reopen
    finally:
        again.close()


# ------------------------------------------------------------------- the list's cost


def test_sqlite_runs_list_work_does_not_grow_with_the_steps_a_run_holds(tmp_path: Path) -> None:
    """SQLite's virtual-machine instructions for one run's row, counted with a progress
    handler: the same for a run of 200 steps and one of 20,000 (the old count scanned them)."""
    store = SQLiteStore(tmp_path / "tv.sqlite3")
    store.open()
    try:
        for name, n in (("small", 200), ("big", 20_000)):
            store.write([st(name, "s", i, i, float(i)) for i in range(n)])
        conn = store._read_conn()
        ticks = [0]

        def tick() -> int:
            ticks[0] += 1
            return 0

        work = {}
        for name in ("small", "big"):
            run_id = store.run_id(name)
            assert run_id is not None
            ticks[0] = 0
            conn.set_progress_handler(tick, 50)
            row = store.run(run_id)
            conn.set_progress_handler(None, 0)
            assert row is not None and row.steps == (200 if name == "small" else 20_000)
            work[name] = ticks[0]
        assert work["big"] <= work["small"] + 2, work
    finally:
        store.close()


def test_postgres_runs_list_reads_at_most_the_latest_steps(postgres_url: str) -> None:
    """EXPLAIN ANALYZE of the runs list's statement: from ``steps`` it reads only the lowest
    rank's latest 100 steps (for the rate), whatever the run holds."""
    import psycopg

    from trainvitals.server.store.postgres.sql import RUN_SELECT
    from trainvitals.server.store.postgres.store import PostgresStore

    store = PostgresStore(postgres_url)
    store.open()
    try:
        store.write([st("big", "s", i, i, float(i)) for i in range(5_000)])
        with psycopg.connect(postgres_url) as conn:
            conn.execute("ANALYZE")
            ((plan,),) = conn.execute(
                f"EXPLAIN (ANALYZE, FORMAT JSON) {RUN_SELECT}").fetchall()

        def read_from_steps(node: dict[str, Any]) -> int:
            own = (int(node.get("Actual Rows", 0)) * int(node.get("Actual Loops", 1))
                   if node.get("Relation Name") == "steps" else 0)
            return own + sum(read_from_steps(child) for child in node.get("Plans", []))

        assert read_from_steps(plan[0]["Plan"]) <= 100
        assert store.runs()[0].steps == 5_000
    finally:
        store.close()


# ------------------------------------------------------------------- SQLite: import, upgrade


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[SQLiteStore]:
    s = SQLiteStore(tmp_path / "source" / "trainvitals.sqlite3")
    s.open()
    yield s
    s.close()


def test_import_counts_the_imported_runs_steps(sqlite_store: SQLiteStore,
                                              tmp_path: Path) -> None:
    model = Model()
    for name in ("a", "b"):
        records: list[Record] = []
        for rank in (0, 1):
            records += [st(name, f"s{rank}", i, i, 10.0 * rank + i, rank=rank)
                        for i in range(5 + rank)]
        records.append(st(name, "resumed", 0, 0, 99.0))  # a replaced time
        sqlite_store.write(records)
        model.write(records)
    out = io.StringIO()
    export_runs(sqlite_store.path, out)
    assert '"table":"run_steps"' not in out.getvalue()  # derived: counted on import
    target = tmp_path / "target" / "trainvitals.sqlite3"
    pre = SQLiteStore(target)  # the target has a run of its own already
    pre.open()
    pre.write([st("c", "s", 0, 0, 1.0)])
    pre.close()
    model.write([st("c", "s", 0, 0, 1.0)])
    result = import_runs(target, io.StringIO(out.getvalue()))
    assert result.imported == ["a", "b"]
    imported = SQLiteStore(target)
    imported.open()
    try:
        check(imported, model)
    finally:
        imported.close()


def version_3_file(path: Path) -> Model:
    """A data file as a version-3 server (before run_steps) left it: the schema of today
    without run_steps, several runs and ranks, a run without steps, a step written twice."""
    store = SQLiteStore(path)
    store.open()
    model = Model()
    for name, ranks in (("a", (0, 1)), ("b", (2,))):
        for rank in ranks:
            records: list[Record] = [RunStart(run=name, session="s", rank=rank, time=1.0)]
            records += [st(name, "s", i + 1, i, 1.0 + i * (rank + 1), rank=rank)
                        for i in range(30 + rank)]
            store.write(records)
            model.write(records)
    resumed = [st("a", "r", 0, 0, 500.0)]
    store.write(resumed)
    model.write(resumed)
    store.write([RunStart(run="none", session="n", time=3.0)])
    store.close()
    with closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("DROP TABLE run_steps")
        conn.execute("UPDATE meta SET value='3' WHERE key='schema_version'")
    return model


def test_a_version_3_file_is_counted_once_when_it_opens(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "trainvitals.sqlite3"
    model = version_3_file(path)
    store = SQLiteStore(path)
    with caplog.at_level(logging.INFO, logger="trainvitals.server"):
        store.open()
    try:
        assert "upgrading the schema from version 3 to 4" in caplog.text
        assert "counted 93 steps of 2 runs" in caplog.text
        assert rows(store, "SELECT value FROM meta WHERE key='schema_version'") == [
            (str(SCHEMA_VERSION),)]
        check(store, model)
        assert listed(store)["none"] == (0, None, None)
        more: list[Record] = [st("b", "s", 100, 7, 0.5, rank=2), st("b", "s", 101, 99, 600.0,
                                                                   rank=2)]
        store.write(more)  # the upgraded file goes on counting
        model.write(more)
        check(store, model)
    finally:
        store.close()
    reopened = SQLiteStore(path)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="trainvitals.server"):
        reopened.open()
    try:
        assert "upgrading" not in caplog.text
        check(reopened, model)
    finally:
        reopened.close()


def test_a_version_1_file_is_counted_through_every_upgrade(tmp_path: Path) -> None:
    from tests.server.test_sqlite_blocks import V1_SCHEMA

    path = tmp_path / "trainvitals.sqlite3"
    with closing(sqlite3.connect(path)) as conn, conn:
        conn.executescript(V1_SCHEMA)
        conn.execute("INSERT INTO meta VALUES ('schema_version', '1')")
        conn.execute("INSERT INTO runs(id, name, created, updated, last_step) "
                     "VALUES (1, 'old', 1.0, 2.0, 0)")
        conn.executemany("INSERT INTO streams(run_id, rank, session) VALUES (1, ?, 's')",
                         [(0,), (1,)])
        conn.executemany("INSERT INTO steps VALUES (1, ?, ?, ?)",
                         [(rank, i, 10.0 * rank + i) for rank in (0, 1) for i in range(25)])
    store = SQLiteStore(path)
    store.open()
    try:
        assert listed(store) == {"old": (50, 0.0, 34.0)}
        assert summary(store) == counted(store) == {("old", 0): (25, 0.0, 24.0),
                                                    ("old", 1): (25, 10.0, 34.0)}
    finally:
        store.close()


def test_a_failed_upgrade_leaves_version_3(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from trainvitals.server.store.sqlite import run_steps

    path = tmp_path / "trainvitals.sqlite3"
    version_3_file(path)

    def broken(conn: sqlite3.Connection, run_ids: Any = None) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(run_steps, "rebuild", broken)  # the module migrate calls
    store = SQLiteStore(path)
    with pytest.raises(sqlite3.OperationalError):
        store.open()
    store.close()
    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone() == (
            "3",)
        assert conn.execute("SELECT count(*) FROM sqlite_master WHERE name='run_steps'"
                            ).fetchone() == (0,)


# ------------------------------------------------------------------- PostgreSQL: upgrade


def test_a_version_2_postgres_database_is_counted_once_when_it_opens(postgres_url: str) -> None:
    import psycopg

    from trainvitals.server.store.postgres.schema import SCHEMA_VERSION as PG_VERSION
    from trainvitals.server.store.postgres.store import PostgresStore

    first = PostgresStore(postgres_url)
    first.open()
    model = Model()
    records: list[Record] = [st("a", "s", i, i, 3.0 * i, rank=i % 2) for i in range(40)]
    records += [st("a", "r", 0, 0, 77.0), st("b", "s", 0, 5, 1.0)]
    first.write(records)
    model.write(records)
    first.close()
    with psycopg.connect(postgres_url) as conn:  # what a version-2 server left
        conn.execute("DROP TABLE run_steps")
        conn.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
    later = PostgresStore(postgres_url)
    later.open()
    try:
        check(later, model)
        assert rows(later, "SELECT value FROM meta WHERE key = 'schema_version'") == [
            (str(PG_VERSION),)]
    finally:
        later.close()
    again = PostgresStore(postgres_url)  # opening an up-to-date database counts nothing
    again.open()
    try:
        with psycopg.connect(postgres_url) as conn:
            conn.execute("UPDATE run_steps SET steps = steps + 1000 WHERE rank = 0")
        assert listed(again)["a"][0] == 1040
    finally:
        again.close()
