"""SQLite's block summaries: kept exact by every write, rebuilt from points, and added to a
file of schema version 1 when the store opens it."""

from __future__ import annotations

import logging
import math
import random
import sqlite3
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest

from trainvitals.protocol import Step
from trainvitals.server import SQLiteStore
from trainvitals.server.store.blocks import BLOCK_BITS, Summary, summarise
from trainvitals.server.store.downsample import by_blocks, m4
from trainvitals.server.store.sqlite.blocks import rebuild
from trainvitals.server.store.sqlite.schema import SCHEMA_VERSION

NAN, INF = math.nan, math.inf
FIELDS = ("count, first_step, first_value, last_step, last_value, min_step, min_value, "
          "max_step, max_value, nan_step, pinf_step, ninf_step")
Blocks = dict[tuple[int, int], Summary]

# Schema version 1, verbatim (server/store/sqlite/schema.py before point_blocks): the file a
# v1 server left.
V1_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, created REAL NOT NULL,
    updated REAL NOT NULL, status TEXT NOT NULL DEFAULT 'running', last_step INTEGER,
    world_size INTEGER NOT NULL DEFAULT 1, reason TEXT NOT NULL DEFAULT '',
    config TEXT NOT NULL DEFAULT '{}');
CREATE TABLE IF NOT EXISTS streams (
    id INTEGER PRIMARY KEY, run_id INTEGER NOT NULL REFERENCES runs(id), rank INTEGER NOT NULL,
    session TEXT NOT NULL, host TEXT NOT NULL DEFAULT '', pid INTEGER NOT NULL DEFAULT 0,
    versions TEXT NOT NULL DEFAULT '{}', started REAL, ended REAL, status TEXT,
    reason TEXT NOT NULL DEFAULT '', dropped INTEGER NOT NULL DEFAULT 0,
    UNIQUE (run_id, rank, session));
-- exactly-once: a record is applied only the first time its (stream, seq) is seen
CREATE TABLE IF NOT EXISTS seen (
    stream_id INTEGER NOT NULL, seq INTEGER NOT NULL, PRIMARY KEY (stream_id, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS series (
    id INTEGER PRIMARY KEY, run_id INTEGER NOT NULL REFERENCES runs(id), rank INTEGER NOT NULL,
    name TEXT NOT NULL, UNIQUE (run_id, rank, name));
-- value NULL means NaN (SQLite cannot store NaN); +/-Inf are stored as themselves.
-- The same holds for clips.raw and clips.threshold.
CREATE TABLE IF NOT EXISTS points (
    series_id INTEGER NOT NULL, step INTEGER NOT NULL, value REAL,
    PRIMARY KEY (series_id, step)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS steps (
    run_id INTEGER NOT NULL, rank INTEGER NOT NULL, step INTEGER NOT NULL, time REAL NOT NULL,
    PRIMARY KEY (run_id, rank, step)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS clips (
    run_id INTEGER NOT NULL, rank INTEGER NOT NULL, step INTEGER NOT NULL, raw REAL,
    threshold REAL, action TEXT NOT NULL, reason TEXT NOT NULL,
    components TEXT NOT NULL DEFAULT '{}', PRIMARY KEY (run_id, rank, step)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS alerts (
    id INTEGER PRIMARY KEY, run_id INTEGER NOT NULL REFERENCES runs(id), rank INTEGER NOT NULL,
    rule TEXT NOT NULL, series TEXT NOT NULL, severity TEXT NOT NULL, state TEXT NOT NULL,
    first_step INTEGER NOT NULL, opened_step INTEGER NOT NULL, last_step INTEGER NOT NULL,
    resolved_step INTEGER, count INTEGER NOT NULL, message TEXT NOT NULL,
    details TEXT NOT NULL DEFAULT '{}');
CREATE UNIQUE INDEX IF NOT EXISTS one_open_alert
    ON alerts (run_id, rank, rule, series) WHERE state = 'open';
-- where non-finite values started (Step.origin), keyed by the step they started at; a later
-- record about the same step (the op-level trace) fills in what it adds
CREATE TABLE IF NOT EXISTS origins (
    run_id INTEGER NOT NULL, rank INTEGER NOT NULL, step INTEGER NOT NULL,
    reported_step INTEGER NOT NULL, kind TEXT NOT NULL, stage TEXT NOT NULL, module TEXT,
    module_type TEXT,
    param TEXT, op TEXT, source TEXT, PRIMARY KEY (run_id, rank, step)
) WITHOUT ROWID;
"""


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteStore]:
    s = SQLiteStore(tmp_path / "blocks.sqlite3")
    s.open()
    yield s
    s.close()


def stored_blocks(conn: sqlite3.Connection) -> Blocks:
    return {(sid, block): Summary(*rest) for sid, block, *rest in conn.execute(
        f"SELECT series_id, block, {FIELDS} FROM point_blocks")}


def blocks_from_points(conn: sqlite3.Connection) -> Blocks:
    """Every block summarised from scratch, in Python, from the points table."""
    groups: dict[tuple[int, int], list[tuple[int, float | None]]] = {}
    for sid, step, value in conn.execute("SELECT series_id, step, value FROM points"):
        groups.setdefault((sid, step >> BLOCK_BITS), []).append((step, value))
    return {key: summarise(points) for key, points in groups.items()}


def a_value(rng: random.Random) -> float:
    """Mostly noise; sometimes NaN, ±Inf, a spike or an exact tie."""
    roll = rng.random()
    if roll < 0.06:
        return rng.choice([NAN, INF, -INF])
    if roll < 0.12:
        return rng.choice([0.0, -0.0, 1.0, -1.0])
    if roll < 0.14:
        return rng.choice([1e300, -1e300])
    return rng.gauss(0.0, 1.0)


def random_writes(store: SQLiteStore, rng: random.Random, batches: int) -> None:
    """Appends, out-of-order steps, steps written again (a resumed session), exact resends."""
    sent: list[list[Step]] = []
    seq, step, session = 0, rng.randrange(-3000, 3000), "s0"
    for _ in range(batches):
        batch = []
        for _ in range(rng.randrange(1, 40)):
            kind = rng.random()
            if kind < 0.1:  # a resumed run goes back and writes earlier steps again
                session, seq = f"s{len(sent)}", 0
                step = max(step - rng.randrange(1, 2500), -4000)
            elif kind < 0.2:
                step += rng.randrange(200, 3000)  # a gap of blocks
            elif kind < 0.3:
                step -= rng.randrange(1, 50)  # out of order, maybe onto a stored step
            else:
                step += 1
            batch.append(Step(run="r", session=session, seq=seq, step=step, time=1.0 + seq,
                              loss=a_value(rng), scalars={"x": a_value(rng)}))
            seq += 1
        if sent and rng.random() < 0.2:
            batch = rng.choice(sent) + batch  # resent: applied once
        store.write(batch)
        sent.append(batch)


@pytest.mark.parametrize("seed", range(12))
def test_blocks_kept_by_writes_equal_a_recompute_from_the_points(
        store: SQLiteStore, seed: int) -> None:
    rng = random.Random(seed)
    random_writes(store, rng, batches=25)
    conn = store._write_conn()
    kept = stored_blocks(conn)
    assert kept == blocks_from_points(conn)
    assert len({block for _, block in kept}) > 3, "the writes should touch several blocks"
    with conn:
        rebuild(conn)  # the SQL backfill that migration and import use
    assert stored_blocks(conn) == kept


def test_a_rewritten_step_that_was_a_blocks_extreme_is_forgotten(store: SQLiteStore) -> None:
    store.write([Step(run="r", session="a", seq=i, step=i, time=1.0, loss=v)
                 for i, v in enumerate([5.0, 99.0, NAN, 1.0])])
    store.write([Step(run="r", session="b", seq=0, step=1, time=2.0, loss=2.0),  # was 99 (max)
                 Step(run="r", session="b", seq=1, step=2, time=2.0, loss=3.0)])  # was NaN
    (block,) = [b for (series_id, _), b in stored_blocks(store._write_conn()).items()
                if series_id == 1]  # the loss
    assert (block.size, block.max_step, block.max_value, block.nan_step) == (4, 0, 5.0, None)
    (thin,) = store.series_m4(1, "loss", buckets=1)
    assert (thin.steps, thin.values) == ([0, 3], [5.0, 1.0])


def test_delete_run_removes_the_blocks(store: SQLiteStore) -> None:
    store.write([Step(run="gone", session="a", seq=i, step=i * 700, time=1.0, loss=1.0)
                 for i in range(10)])
    conn = store._write_conn()
    assert conn.execute("SELECT count(*) FROM point_blocks").fetchone()[0] == 7
    run_id = store.run_id("gone")
    assert run_id is not None
    store.delete_run(run_id)
    assert conn.execute("SELECT count(*) FROM point_blocks").fetchone() == (0,)


# --------------------------------------------------------------------------- migration 1 -> 2


def v1_file(path: Path, series: dict[str, dict[int, float]]) -> None:
    """A data file as a version-1 server left it: one run, these series of rank 0."""
    with closing(sqlite3.connect(path)) as conn, conn:
        conn.executescript(V1_SCHEMA)
        conn.execute("INSERT INTO meta VALUES ('schema_version', '1')")
        conn.execute("INSERT INTO runs(id, name, created, updated, last_step) "
                     "VALUES (1, 'old', 1.0, 2.0, 0)")
        conn.execute("INSERT INTO streams(run_id, rank, session) VALUES (1, 0, 's')")
        for i, (name, points) in enumerate(series.items(), start=1):
            conn.execute("INSERT INTO series(id, run_id, rank, name) VALUES (?, 1, 0, ?)",
                         (i, name))
            conn.executemany("INSERT INTO points VALUES (?, ?, ?)",
                             [(i, s, v) for s, v in points.items()])


def test_a_version_1_file_is_upgraded_in_place_and_keeps_working(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rng = random.Random(3)
    loss = {s: a_value(rng) for s in rng.sample(range(-2000, 200_000), 30_000)}
    loss[150_001] = 1e6  # a spike
    series = {"loss": loss, "lr": {0: 0.1, 5000: NAN, 9000: 0.05}}
    path = tmp_path / "trainvitals.sqlite3"
    v1_file(path, series)

    store = SQLiteStore(path)
    with caplog.at_level(logging.INFO, logger="trainvitals.server"):
        store.open()
    try:
        assert "upgrading the schema from version 1 to 2" in caplog.text
        assert "summarised 30004 points into blocks" in caplog.text
        conn = store._write_conn()
        assert conn.execute("SELECT value FROM meta").fetchone() == (str(SCHEMA_VERSION),)
        assert stored_blocks(conn) == blocks_from_points(conn)
        assert {(i.name, i.points) for i in store.series_list(1)} == {("loss", 30_001),
                                                                         ("lr", 3)}
        for start, end, buckets in [(None, None, 40), (-1500, 150_500, 25), (None, None, 2000)]:
            (got,) = store.series_m4(1, "loss", start=start, end=end, buckets=buckets)
            steps, values = m4(list(loss), list(loss.values()), start=start, end=end,
                               buckets=buckets)
            assert got.steps == steps
            assert all(a == b or (math.isnan(a) and math.isnan(b))
                       for a, b in zip(got.values, values, strict=True))
        assert by_blocks(-2000, 200_000, 40), "the first query reads summaries"
        assert 150_001 in got.steps
        store.write([Step(run="old", session="new", seq=0, step=200_001, time=3.0, loss=7.0)])
        assert stored_blocks(conn) == blocks_from_points(conn)
    finally:
        store.close()
    reopened = SQLiteStore(path)  # the upgrade happens once
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="trainvitals.server"):
        reopened.open()
    reopened.close()
    assert "upgrading" not in caplog.text
