"""SQLite's bulk write (one statement per table for a run of new steps) against the loop.

``SQLiteStore.write`` resolves every record's stream, inserts ``seen`` in one statement and
each run of consecutive new steps with multi-row INSERTs; a statement that meets a row already
there (a resent record, a step written again, two copies in one write) is taken back to its
savepoint and done record by record, and a ``LimitExceeded`` makes the whole write go record
by record. Here random sequences of writes — resends, steps written again with other values
and times, NaN and ±Inf, clip events, origins, run starts and ends, several ranks and
sessions — go into two real SQLite files, one through ``write`` and one through the
record-by-record loop (``_write(…, bulk=False)``): every table must end up the same, and
every write must return the same accepted records and high-water marks. Limits must raise
the same error. A last test proves the bulk statements are used at all.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trainvitals.protocol import (
    ClipEvent,
    NonFiniteOrigin,
    Record,
    RunEnd,
    RunStart,
    Step,
    TensorStats,
)
from trainvitals.protocol.series import step_values
from trainvitals.server import SQLiteStore
from trainvitals.server.store.limits import LimitExceeded, Limits
from trainvitals.server.store.sqlite import write as sqlite_write

TABLES = ("runs", "streams", "seen", "series", "points", "point_blocks", "steps", "run_steps",
          "clips", "origins")
SETTINGS = settings(max_examples=40, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])

values = st.sampled_from([0.5, 1.0, -2.0, math.nan, math.inf, -math.inf, 0.0])
clip = st.none() | st.builds(ClipEvent, raw=values, threshold=st.just(10.0),
                             action=st.sampled_from(["zeroed", "passed"]),
                             reason=st.just("above_threshold"))
origin = st.none() | st.builds(NonFiniteOrigin, step=st.integers(0, 3),
                               kind=st.just("nan"), stage=st.just("forward"),
                               module=st.none() | st.just("head"))


@st.composite
def record(draw: st.DrawFn) -> Record:
    run = draw(st.sampled_from(["a", "b"]))
    rank = draw(st.integers(0, 1))
    session = draw(st.sampled_from(["s1", "s2"]))
    seq = draw(st.integers(0, 6))
    kind = draw(st.sampled_from(["step"] * 6 + ["start", "end"]))
    time = draw(st.sampled_from([100.0, 101.0, 102.5, 99.0])) + seq
    if kind == "start":
        return RunStart(run=run, session=session, rank=rank, seq=seq, time=time, world_size=2)
    if kind == "end":
        return RunEnd(run=run, session=session, rank=rank, seq=seq, time=time,
                      status=draw(st.sampled_from(["finished", "crashed"])))
    tensors = {}
    if draw(st.booleans()):
        tensors["t"] = TensorStats(4, draw(st.integers(0, 2)), 0, 0, -1.0, draw(values), 0.5,
                                   1.0, "float32", headroom=draw(st.none() | values))
    return Step(run=run, session=session, rank=rank, seq=seq,
                step=draw(st.integers(0, 3)) + draw(st.sampled_from([0, 1024])), time=time,
                loss=draw(values), lr=draw(st.none() | values),
                components=draw(st.dictionaries(st.sampled_from(["p", "q"]), values)),
                tensors=tensors, clip=draw(clip), origin=draw(origin))


def dump(store: SQLiteStore) -> dict[str, list[tuple[Any, ...]]]:
    conn = store._write_conn()
    out = {}
    for table in TABLES:
        rows = conn.execute(f"SELECT * FROM {table}").fetchall()
        # NaN is NULL in SQLite; compare rows as text so that NULLs and ±Inf sort too
        out[table] = sorted(rows, key=repr)
    return out


def outcome(store: SQLiteStore, records: list[Record], bulk: bool) -> tuple[Any, ...]:
    try:
        result = (store.write(records) if bulk
                  else store._write(records, step_values, bulk=False))
    except LimitExceeded as exc:
        return ("limit", str(exc))
    return ("ok", [(type(r).__name__, r.run, r.rank, r.session, r.seq)
                   for r in result.accepted], sorted(result.top_seq.items()))


def stores(tmp_path: Path, name: str, limits: Limits | None = None
           ) -> tuple[SQLiteStore, SQLiteStore]:
    pair = []
    for side in ("bulk", "loop"):
        store = SQLiteStore(tmp_path / f"{name}-{side}.sqlite3", limits=limits)
        store.open()
        pair.append(store)
    return pair[0], pair[1]


_case = 0


@SETTINGS
@given(st.lists(st.lists(record(), min_size=1, max_size=8), min_size=1, max_size=5))
def test_bulk_writes_store_what_the_record_loop_stores(tmp_path: Path,
                                                       writes: list[list[Record]]) -> None:
    global _case
    _case += 1
    bulk, loop = stores(tmp_path, f"case{_case}")
    try:
        for records in writes:
            assert outcome(bulk, records, True) == outcome(loop, records, False)
        assert dump(bulk) == dump(loop)
    finally:
        bulk.close()
        loop.close()


@SETTINGS
@given(st.lists(record(), min_size=1, max_size=10), st.integers(1, 2), st.integers(1, 6))
def test_limits_strike_as_in_the_record_loop(tmp_path: Path, records: list[Record],
                                             max_runs: int, max_series: int) -> None:
    global _case
    _case += 1
    limits = Limits(max_runs=max_runs, max_series_per_run=max_series)
    bulk, loop = stores(tmp_path, f"limits{_case}", limits)
    try:
        assert outcome(bulk, records, True) == outcome(loop, records, False)
        assert dump(bulk) == dump(loop)
    finally:
        bulk.close()
        loop.close()


def test_new_steps_go_in_bulk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = SQLiteStore(tmp_path / "tv.sqlite3")
    store.open()
    store.write([RunStart(run="a", session="s", seq=0, time=1.0)])

    def step_by_step(*args: Any) -> None:
        raise AssertionError("a new step was written step by step")

    monkeypatch.setattr(SQLiteStore, "_write_step", step_by_step)
    many = {f"c{i}": float(i) for i in range(8)}  # 60 steps x 10 values: one INSERT of
    steps = [Step(run="a", session="s", seq=s, step=s, time=1.0 + s, loss=float(s),  # 500 rows
                  components={"p": math.nan, "q": -math.inf, **many})       # and 100 more
             for s in range(1, 61)]
    assert sqlite_write._CHUNK < 60 * 10
    result = store.write(steps)
    assert len(result.accepted) == 60 and result.top_seq[("a", 0, "s")] == 60
    (series,) = store.series(1, "loss/q")
    assert series.steps == list(range(1, 61)) and series.values == [-math.inf] * 60
    (series,) = store.series(1, "loss/p")
    assert all(math.isnan(v) for v in series.values) and len(series.values) == 60
    (series,) = store.series(1, "loss/c7")
    assert series.values == [7.0] * 60
    monkeypatch.undo()
    again = store.write(steps[:3])  # resent: nothing new, acknowledged the same
    assert again.accepted == [] and again.top_seq[("a", 0, "s")] == 60
    store.close()
