"""The store contract, run against every store implementation (the ``store`` fixture).

Records go in through ``write``/``save_alerts`` and come back through the read methods; NaN and
±Inf must come back exactly, and a record is applied once per (run, rank, session, seq).
"""

from __future__ import annotations

import math
import sqlite3
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from trainvitals.protocol import ClipEvent, Record, RunEnd, RunStart, Step, TensorStats
from trainvitals.server import SQLiteStore, Store
from trainvitals.server.alerts import Alert
from trainvitals.server.store import ClipRow, SeriesData, SeriesInfo
from trainvitals.server.store.sqlite.schema import SCHEMA_VERSION

NAN, INF = math.nan, math.inf


def run_start(run: str = "alpha", session: str = "s1", *, rank: int = 0, time: float = 100.0,
              **kw: Any) -> RunStart:
    return RunStart(run=run, session=session, rank=rank, seq=0, time=time, **kw)


def step(seq: int, n: int, *, run: str = "alpha", session: str = "s1", rank: int = 0,
         time: float | None = None, **kw: Any) -> Step:
    return Step(run=run, session=session, rank=rank, seq=seq, step=n,
                time=100.0 + seq if time is None else time, **kw)


def run_end(seq: int, *, run: str = "alpha", session: str = "s1", rank: int = 0,
            time: float = 200.0, **kw: Any) -> RunEnd:
    return RunEnd(run=run, session=session, rank=rank, seq=seq, time=time, **kw)


def only_run_id(store: Store) -> int:
    (row,) = store.runs()
    return row.id


def same_float(a: float, b: float) -> bool:
    """Equal, or both NaN."""
    return (math.isnan(a) and math.isnan(b)) or a == b


def same_floats(a: list[float], b: list[float]) -> bool:
    return len(a) == len(b) and all(map(same_float, a, b))


# --------------------------------------------------------------------------- write and read


def test_write_then_read_run_series_and_clips(store: Store) -> None:
    stats = TensorStats(count=4, nan=0, posinf=0, neginf=0, min=-1.0, max=3.0, mean=0.5,
                        absmax=3.0, dtype="float32", headroom=85.72)
    clip = ClipEvent(raw=20.0, threshold=10.0, action="zeroed", reason="above_threshold",
                     components={"l1": 20.0})
    records: list[Record] = [
        run_start(host="gpu-1", pid=7, config={"lr": 0.001, "layers": [1, 2]}),
        step(1, 0, loss=2.5, loss_used=2.5, grad_norm=1.5, lr=0.001, components={"l1": 1.0},
             scalars={"acc": 0.5}, tensors={"z": stats}),
        step(2, 1, loss=20.0, loss_used=0.0, clip=clip),
        run_end(3, time=103.0),
    ]

    result = store.write(records)

    assert result.accepted == records
    assert result.top_seq == {("alpha", 0, "s1"): 3}
    run_id = result.run_ids["alpha"]
    (row,) = store.runs()
    assert (row.id, row.name, row.status, row.reason) == (run_id, "alpha", "finished", "")
    assert (row.created, row.updated, row.last_step) == (100.0, 103.0, 1)
    assert (row.world_size, row.ranks, row.dropped, row.steps) == (1, [0], 0, 2)
    assert (row.first_time, row.last_time) == (101.0, 102.0)
    assert row.config == {"lr": 0.001, "layers": [1, 2]}
    assert row.open_alerts == {}
    assert store.run(run_id) == row
    assert store.run(run_id + 1000) is None

    listed = {(s.name, s.rank): s.points for s in store.series_list(run_id)}
    tensor_series = {(f"tensor/z/{stat}", 0): 1 for stat in (
        "count", "nan", "posinf", "neginf", "min", "max", "mean", "absmax", "headroom")}
    assert listed == {("loss", 0): 2, ("loss_used", 0): 2, ("grad_norm", 0): 1, ("lr", 0): 1,
                      ("loss/l1", 0): 1, ("scalar/acc", 0): 1, **tensor_series}
    assert store.series(run_id, "loss") == [SeriesData("loss", 0, [0, 1], [2.5, 20.0])]
    assert store.series(run_id, "loss_used") == [SeriesData("loss_used", 0, [0, 1], [2.5, 0.0])]
    assert store.series(run_id, "tensor/z/headroom")[0].values == [85.72]
    assert store.series(run_id, "tensor/z/count")[0].values == [4.0]
    assert store.series(run_id, "no/such/series") == []
    assert store.clips(run_id) == [ClipRow(0, 1, 20.0, 10.0, "zeroed", "above_threshold",
                                           {"l1": 20.0})]


def test_nonfinite_values_come_back_exactly(store: Store) -> None:
    stats = TensorStats(count=3, nan=1, posinf=1, neginf=1, min=NAN, max=NAN, mean=NAN,
                        absmax=NAN, dtype="float16", headroom=NAN)
    clip = ClipEvent(raw=NAN, threshold=INF, action="passed", reason="nan",
                     components={"a": INF, "b": -INF, "c": NAN, "d": 1.5})
    store.write([
        run_start(),
        step(1, 0, loss=NAN, loss_used=INF, grad_norm=-INF, lr=0.0,
             scalars={"n": NAN, "p": INF, "m": -INF}, tensors={"z": stats}, clip=clip),
        step(2, 1, loss=-INF, loss_used=NAN, grad_norm=INF, lr=-0.0),
    ])
    run_id = only_run_id(store)

    def values(name: str) -> list[float]:
        (data,) = store.series(run_id, name)
        return data.values

    assert same_floats(values("loss"), [NAN, -INF])
    assert same_floats(values("loss_used"), [INF, NAN])
    assert same_floats(values("grad_norm"), [-INF, INF])
    assert values("lr") == [0.0, 0.0]
    assert same_floats(values("scalar/n"), [NAN])
    assert values("scalar/p") == [INF]
    assert values("scalar/m") == [-INF]
    for stat in ("min", "max", "mean", "absmax", "headroom"):
        assert same_floats(values(f"tensor/z/{stat}"), [NAN]), stat
    assert values("tensor/z/nan") == [1.0]
    (row,) = store.clips(run_id)
    assert math.isnan(row.raw) and row.threshold == INF
    assert (row.action, row.reason) == ("passed", "nan")
    assert row.components["a"] == INF and row.components["b"] == -INF
    assert math.isnan(row.components["c"]) and row.components["d"] == 1.5


def test_clip_with_nan_threshold_is_stored(store: Store) -> None:
    """``clip_guard(loss, threshold=nan)`` is legal; its event must not break the commit."""
    clip = ClipEvent(raw=NAN, threshold=NAN, action="passed", reason="nan")
    result = store.write([run_start(), step(1, 0, loss=NAN, clip=clip)])
    assert len(result.accepted) == 2
    (row,) = store.clips(only_run_id(store))
    assert math.isnan(row.raw) and math.isnan(row.threshold)


# --------------------------------------------------------------------------- exactly once


def test_same_batch_twice_is_applied_once(store: Store) -> None:
    batch: list[Record] = [run_start(), step(1, 0, loss=1.0), step(2, 1, loss=2.0), run_end(3)]
    first = store.write(batch)
    second = store.write(batch)

    assert first.accepted == batch
    assert second.accepted == []
    assert second.top_seq == first.top_seq == {("alpha", 0, "s1"): 3}
    run_id = only_run_id(store)
    assert store.series(run_id, "loss") == [SeriesData("loss", 0, [0, 1], [1.0, 2.0])]
    assert store.series_list(run_id) == [SeriesInfo("loss", 0, 2)]
    assert store.runs()[0].steps == 2


def test_overlapping_resend_applies_only_new_records_and_first_copy_wins(store: Store) -> None:
    store.write([run_start(), step(1, 0, loss=1.0), step(2, 1, loss=2.0)])
    # A resend of seq 2 (with different content, which must not win) plus a new seq 3.
    result = store.write([step(2, 1, loss=999.0), step(3, 2, loss=3.0)])

    assert result.accepted == [step(3, 2, loss=3.0)]
    assert result.top_seq == {("alpha", 0, "s1"): 3}
    (data,) = store.series(only_run_id(store), "loss")
    assert (data.steps, data.values) == ([0, 1, 2], [1.0, 2.0, 3.0])


def test_exactly_once_survives_reopening_the_store(store_factory: Any) -> None:
    batch: list[Record] = [run_start(), step(1, 0, loss=1.0)]
    first = store_factory()
    first.open()
    first.write(batch)
    first.close()

    again = store_factory()
    again.open()
    try:
        assert again.write(batch).accepted == []
        assert again.write([step(2, 1, loss=2.0)]).accepted == [step(2, 1, loss=2.0)]
        (data,) = again.series(only_run_id(again), "loss")
        assert (data.steps, data.values) == ([0, 1], [1.0, 2.0])
    finally:
        again.close()


def test_resumed_run_is_a_new_session_of_the_same_run(store: Store) -> None:
    store.write([run_start(session="s1", config={"lr": 1.0}), step(1, 0, session="s1", loss=1.0),
                 step(2, 1, session="s1", loss=2.0),
                 run_end(3, session="s1", status="crashed", reason="OOM")])
    assert [(r.status, r.reason) for r in store.runs()] == [("crashed", "OOM")]

    # Same run name, new process: seq starts at 0 again in a new session.
    result = store.write([run_start(session="s2", time=300.0, config={"lr": 2.0}),
                          step(1, 2, session="s2", loss=3.0)])
    assert len(result.accepted) == 2
    assert result.top_seq == {("alpha", 0, "s2"): 1}
    (row,) = store.runs()
    assert (row.status, row.reason) == ("running", "")  # the old crash no longer applies
    assert row.config == {"lr": 1.0}  # the first session's config is kept
    (data,) = store.series(row.id, "loss")
    assert (data.steps, data.values) == ([0, 1, 2], [1.0, 2.0, 3.0])

    store.write([run_end(2, session="s2", time=400.0)])
    (row,) = store.runs()
    # The resumed session finished: the run did, though an earlier session crashed.
    assert (row.status, row.reason, row.last_step, row.ranks) == ("finished", "", 2, [0])


def test_a_step_written_again_replaces_the_stored_values(store: Store) -> None:
    """A run resumed from a checkpoint redoes steps: the newest record of a step wins."""
    store.write([run_start(session="s1"), step(1, 0, session="s1", loss=1.0),
                 step(2, 1, session="s1", loss=2.0, time=50.0)])
    store.write([run_start(session="s2", time=300.0),
                 step(1, 1, session="s2", loss=NAN, time=301.0),
                 step(2, 2, session="s2", loss=3.0, time=302.0),
                 step(3, 2, session="s2", loss=INF, time=303.0)])  # the same step, twice
    run_id = only_run_id(store)
    (data,) = store.series(run_id, "loss")
    assert data.steps == [0, 1, 2]
    assert same_floats(data.values, [1.0, NAN, INF])
    row = store.runs()[0]
    assert (row.steps, row.last_step, row.last_time) == (3, 2, 303.0)


def test_resumed_run_finishes_although_the_killed_session_never_ended(store: Store) -> None:
    # kill -9: session s1 never sends run_end.
    store.write([run_start(session="s1"), step(1, 0, session="s1", loss=1.0)])
    store.write([run_start(session="s2", time=300.0), step(1, 1, session="s2", loss=2.0),
                 run_end(2, session="s2", time=400.0)])
    (row,) = store.runs()
    assert row.status == "finished"


def test_multi_rank_series_and_run_status(store: Store) -> None:
    for rank in (0, 1):
        store.write([run_start(session=f"s{rank}", rank=rank, world_size=2)]
                    + [step(i + 1, i, session=f"s{rank}", rank=rank, loss=10.0 * rank + i)
                       for i in range(4)])
    run_id = only_run_id(store)

    both = store.series(run_id, "loss")
    assert both == [SeriesData("loss", 0, [0, 1, 2, 3], [0.0, 1.0, 2.0, 3.0]),
                    SeriesData("loss", 1, [0, 1, 2, 3], [10.0, 11.0, 12.0, 13.0])]
    assert store.series(run_id, "loss", rank=1) == [both[1]]
    assert store.series(run_id, "loss", rank=2) == []
    assert store.series(run_id, "loss", start=1, end=2) == [
        SeriesData("loss", 0, [1, 2], [1.0, 2.0]), SeriesData("loss", 1, [1, 2], [11.0, 12.0])]
    assert store.series(run_id, "loss", rank=0, start=2, limit=1) == [
        SeriesData("loss", 0, [2], [2.0])]
    assert store.series_list(run_id) == [SeriesInfo("loss", 0, 4), SeriesInfo("loss", 1, 4)]
    row = store.runs()[0]
    assert (row.world_size, row.ranks, row.steps, row.last_step) == (2, [0, 1], 8, 3)

    # Rank 1 crashes first, rank 0 finishes later: the run crashed, and says why.
    store.write([run_end(5, session="s1", rank=1, status="crashed", reason="NCCL timeout",
                         dropped=2)])
    assert (store.runs()[0].status, store.runs()[0].reason) == ("running", "")
    store.write([run_end(5, session="s0", rank=0, status="finished")])
    row = store.runs()[0]
    assert (row.status, row.reason, row.dropped) == ("crashed", "NCCL timeout", 2)


def test_clips_in_step_order_with_range(store: Store) -> None:
    def clip(raw: float) -> ClipEvent:
        return ClipEvent(raw=raw, threshold=10.0, action="zeroed", reason="above_threshold")

    store.write([run_start()] + [step(i + 1, i, loss=float(i), clip=clip(11.0 + i))
                                 for i in range(5)])
    run_id = only_run_id(store)
    assert [c.step for c in store.clips(run_id)] == [0, 1, 2, 3, 4]
    assert [(c.step, c.raw) for c in store.clips(run_id, start=1, end=3)] == [
        (1, 12.0), (2, 13.0), (3, 14.0)]
    assert [c.step for c in store.clips(run_id, start=2, limit=2)] == [2, 3]


def test_runs_are_listed_newest_first(store: Store) -> None:
    store.write([run_start("old", time=10.0), run_start("new", session="s9", time=20.0)])
    assert [r.name for r in store.runs()] == ["new", "old"]


# --------------------------------------------------------------------------- alerts


def _alert(**kw: Any) -> Alert:
    base: dict[str, Any] = dict(
        run="alpha", rank=0, rule="clip", series="loss", severity="warning", state="open",
        first_step=5, opened_step=5, last_step=5, resolved_step=None, count=1, message="fired",
        details={"raw": 20.0, "rate": 0.5})
    base.update(kw)
    return Alert(**base)


def test_save_alerts_upserts_the_open_alert_and_reopening_adds_a_row(store: Store) -> None:
    store.write([run_start()])
    opened = _alert()
    store.save_alerts([opened])
    assert store.alerts() == [opened]

    updated = replace(opened, last_step=7, count=3, message="fired again")
    store.save_alerts([updated])
    assert store.alerts() == [updated]

    resolved = replace(updated, state="resolved", resolved_step=12)
    store.save_alerts([resolved])
    assert store.alerts() == [resolved]
    assert store.runs()[0].open_alerts == {}

    reopened = _alert(first_step=20, opened_step=20, last_step=20, message="back")
    store.save_alerts([reopened])
    assert store.alerts() == [reopened, resolved]  # newest first
    assert store.alerts(state="open") == [reopened]
    assert store.alerts(state="resolved") == [resolved]
    assert store.alerts(run="alpha", state="open") == [reopened]
    assert store.alerts(run="other") == []
    assert store.runs()[0].open_alerts == {"warning": 1}


def test_alerts_are_keyed_by_rank_rule_and_series(store: Store) -> None:
    store.write([run_start()])
    a = _alert()
    others = [_alert(rank=1), _alert(rule="stall", series="loss_used", severity="critical"),
              _alert(series="grad_norm")]
    store.save_alerts([a, *others])
    store.save_alerts([replace(a, count=9)])
    assert sorted((x.rank, x.rule, x.series, x.count) for x in store.alerts(state="open")) == [
        (0, "clip", "grad_norm", 1), (0, "clip", "loss", 9), (0, "stall", "loss_used", 1),
        (1, "clip", "loss", 1)]
    assert store.runs()[0].open_alerts == {"warning": 3, "critical": 1}


def test_alert_details_keep_nonfinite_values(store: Store) -> None:
    store.write([run_start()])
    store.save_alerts([_alert(rule="nonfinite", details={"value": NAN, "hi": INF, "lo": -INF,
                                                         "reason": "nan", "count": 3})])
    (saved,) = store.alerts()
    assert math.isnan(saved.details["value"])  # type: ignore[arg-type]
    assert (saved.details["hi"], saved.details["lo"]) == (INF, -INF)
    assert (saved.details["reason"], saved.details["count"]) == ("nan", 3)


# --------------------------------------------------------------------------- SQLite specifics


def test_sqlite_schema_version_mismatch_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "tv.sqlite3"
    first = SQLiteStore(path)
    first.open()
    first.close()
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE meta SET value='999' WHERE key='schema_version'")
    conn.close()

    later = SQLiteStore(path)
    with pytest.raises(RuntimeError, match=rf"schema version 999; this server needs "
                                           rf"{SCHEMA_VERSION}\. Use a new data directory"):
        later.open()
    later.close()


def test_sqlite_other_schema_version_is_refused_before_touching_it(tmp_path: Path) -> None:
    # A file from another schema version whose tables do not fit this version's statements.
    path = tmp_path / "tv.sqlite3"
    with sqlite3.connect(path) as conn:
        conn.executescript("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
                           "INSERT INTO meta VALUES ('schema_version', '0');"
                           "CREATE TABLE alerts (id INTEGER PRIMARY KEY, what TEXT);")
    conn.close()

    store = SQLiteStore(path)
    with pytest.raises(RuntimeError, match="has schema version 0"):
        store.open()
    store.close()
    with sqlite3.connect(path) as conn:
        tables = {name for (name,) in conn.execute(
            "SELECT name FROM sqlite_master WHERE type='table'")}
    conn.close()
    assert tables == {"meta", "alerts"}


def test_sqlite_store_recovers_after_a_failed_write(tmp_path: Path) -> None:
    """A transaction that fails part-way must not leave stale ids cached for the next write."""
    store = SQLiteStore(tmp_path / "tv.sqlite3")
    store.open()
    try:
        # Valid on the wire (the protocol puts no bound on ints) but too big for SQLite.
        with pytest.raises(OverflowError):
            store.write([run_start("fresh"), step(1, 2**70, run="fresh", loss=1.0)])
        assert store.runs() == []
        result = store.write([run_start("fresh"), step(1, 0, run="fresh", loss=1.0)])
        assert len(result.accepted) == 2
        (data,) = store.series(only_run_id(store), "loss")
        assert (data.steps, data.values) == ([0], [1.0])
    finally:
        store.close()


# --------------------------------------------------------------------------- incidents


def _incident(number: int, *, run: str = "alpha", state: str = "open",
              severity: str = "critical") -> Any:
    from trainvitals.server.alerts.incidents import Evidence, Incident

    evidence = Evidence(rank=1, rule="nonfinite", series="loss", severity="critical",
                        first_step=7, last_step=9, count=3, state="open",
                        message="loss is NaN", details={"value": NAN, "limit": -INF, "n": 3})
    return Incident(run=run, number=number, kind="nonfinite_loss", severity=severity,  # type: ignore[arg-type]
                    state=state, onset_step=7, rank=1, opened_step=7, last_step=9,  # type: ignore[arg-type]
                    resolved_step=None if state != "resolved" else 12,
                    headline="the loss went NaN at step 7", remedy="look at the loss",
                    evidence=(evidence,), facts={"why": "", "onset": 7})


def test_incidents_round_trip_with_their_evidence_and_nonfinite_details(store: Store) -> None:
    store.write([run_start(), run_start("beta", "s2")])
    first = _incident(1)
    store.save_incidents([first, _incident(2, state="resolved", severity="warning"),
                          _incident(1, run="beta", state="escalated")])
    (back,) = [i for i in store.incidents(run="alpha") if i.number == 1]
    assert back.evidence[0].details["n"] == 3
    assert math.isnan(float(back.evidence[0].details["value"]))
    assert back.evidence[0].details["limit"] == -INF
    assert replace(back, evidence=()) == replace(first, evidence=())
    assert [(i.run, i.number) for i in store.incidents(state="open")] == [("beta", 1),
                                                                         ("alpha", 1)]
    store.save_incidents([replace(first, state="resolved", resolved_step=20)])
    assert [i.number for i in store.incidents(run="alpha", state="resolved")] == [1, 2]
    rows = {r.name: r for r in store.runs()}
    assert (rows["alpha"].incidents, rows["alpha"].open_incidents) == (2, {})
    assert (rows["beta"].incidents, rows["beta"].open_incidents) == (1, {"critical": 1})


def test_deleting_a_run_deletes_its_incidents(store: Store) -> None:
    store.write([run_start(), run_start("beta", "s2")])
    store.save_incidents([_incident(1), _incident(1, run="beta")])
    alpha = next(r.id for r in store.runs() if r.name == "alpha")
    store.delete_run(alpha)
    assert [i.run for i in store.incidents()] == ["beta"]
