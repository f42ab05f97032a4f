"""The SQLite store's write path: records into rows, in one transaction per call.

``SQLiteWrites`` is mixed into ``SQLiteStore`` (``store.py``: the engine, its connections and
its reads). Steps go in as multi-row INSERTs of a group of records at a time; a group that
meets an existing row (a resend, a step written again) is undone by a savepoint and written
record by record, which is also the path for frames whose run ends precede a stream's first
record, and for limit errors (the order they strike in must be the records' own).
"""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Sequence
from itertools import chain, repeat
from typing import Any

from trainvitals.protocol import Record, RunEnd, RunStart, Step
from trainvitals.protocol.series import ValuesOf, step_values
from trainvitals.server.store import (
    WriteResult,
)
from trainvitals.server.store.codec import (
    dumps_json,
)
from trainvitals.server.store.limits import LimitExceeded, Limits
from trainvitals.server.store.run_steps import PendingSteps
from trainvitals.server.store.sqlite.blocks import PendingBlocks
from trainvitals.server.store.sqlite.run_steps import flush as flush_run_steps

__all__ = ["SQLiteWrites"]

Stream = tuple[str, int, str]


class SQLiteWrites:
    """The write half of ``SQLiteStore`` (which provides the connections, limits and ids)."""

    limits: Limits
    _run_ids: dict[str, int]
    _series_ids: dict[tuple[int, int, str], int]
    _stream_ids: dict[tuple[int, int, str], int]
    _layouts: dict[tuple[int, int, tuple[str, ...]], tuple[int, ...]]
    _high_water: dict[int, int]
    _blocks: PendingBlocks
    _steps: PendingSteps

    def _write_conn(self) -> sqlite3.Connection:
        raise NotImplementedError  # SQLiteStore's


    def write(self, records: Sequence[Record], values_of: ValuesOf = step_values
              ) -> WriteResult:
        if not _streams_lead_run_ends(records):
            return self._write(records, values_of, bulk=False)
        try:
            return self._write(records, values_of, bulk=True)
        except LimitExceeded:
            # The bulk path resolves every record's stream before applying any record, so a
            # limit may strike in another order than record by record: write record by record
            # (it is rolled back already), which raises the error that order meets first.
            return self._write(records, values_of, bulk=False)

    def _write(self, records: Sequence[Record], values_of: ValuesOf, *, bulk: bool
               ) -> WriteResult:
        conn = self._write_conn()
        accepted: list[Record] = []
        streams: dict[Stream, int] = {}
        try:
            with conn:
                if bulk:
                    accepted = self._write_bulk(conn, records, streams, values_of)
                else:
                    for record in records:
                        key = (record.run, record.rank, record.session)
                        streams[key] = self._stream_id(conn, record)
                        if self._first_time(conn, record):
                            self._apply(conn, record, values_of)
                            accepted.append(record)
                high_water = {key: self._advance(conn, sid) for key, sid in streams.items()}
                self._blocks.flush(conn)
                flush_run_steps(conn, self._steps)
        except BaseException:
            self._forget_ids()  # the rollback may have taken ids cached during this write
            self._blocks.clear()
            self._steps.clear()
            raise
        return WriteResult(accepted, dict(self._run_ids),
                           {key: seq for key, seq in high_water.items() if seq >= 0})

    def _write_bulk(self, conn: sqlite3.Connection, records: Sequence[Record],
                    streams: dict[Stream, int], values_of: ValuesOf) -> list[Record]:
        """What the record-by-record loop does, in bulk (inside the write's transaction):
        every record's stream, in record order; ``seen`` in one statement; each run of
        consecutive new steps by ``_write_steps``, run starts and ends where they stand. A
        statement that finds a row already there (a resent record, a step written again) is
        taken back to its savepoint and done record by record instead."""
        if not conn.in_transaction:
            conn.execute("BEGIN")  # a savepoint must not start (and its release commit) one
        sids = []
        for record in records:
            key = (record.run, record.rank, record.session)
            sid = streams.get(key)
            if sid is None:
                sid = streams[key] = self._stream_id(conn, record)
            sids.append(sid)
        conn.execute("SAVEPOINT tv_seen")
        if _insert_many(conn, _INSERT_SEEN, _INSERT_SEENS,
                        list(zip(sids, [r.seq for r in records], strict=True))) == len(records):
            conn.execute("RELEASE tv_seen")
            accepted = list(records)
        else:
            conn.execute("ROLLBACK TO tv_seen")
            conn.execute("RELEASE tv_seen")
            accepted = [r for r in records if self._first_time(conn, r)]
        steps: list[Step] = []
        for record in accepted:
            if isinstance(record, Step):
                steps.append(record)
                continue
            self._write_steps(conn, steps, values_of)
            steps = []
            self._apply(conn, record, values_of)
        self._write_steps(conn, steps, values_of)
        return accepted

    def _write_steps(self, conn: sqlite3.Connection, steps: list[Step],
                     values_of: ValuesOf) -> None:
        """Consecutive new steps as ``_write_step`` writes them one by one, with one
        statement for all their points and one for their ``steps`` rows. Points go series by
        series (each series' new steps lie together in its part of the table)."""
        if not steps:
            return
        # Series ids first, in the order the loop meets them (ids are numbered in it), and
        # outside the savepoint: its rollback must not take rows whose ids stay cached.
        groups: dict[tuple[int, int, tuple[str, ...]], tuple[tuple[int, ...], list[int],
                                                             list[tuple[float, ...]]]] = {}
        times: list[tuple[int, int, int, float]] = []
        for step in steps:
            run_id = self._run_ids[step.run]
            values = values_of(step)
            key = (run_id, step.rank, tuple(values))
            group = groups.get(key)
            if group is None:
                ids = self._layouts.get(key)
                if ids is None:
                    ids = self._layouts[key] = tuple(
                        self._series_id(conn, run_id, step, name) for name in key[2])
                group = groups[key] = (ids, [], [])
            group[1].append(step.step)
            group[2].append(tuple(values.values()))
            times.append((run_id, step.rank, step.step, step.time))
        rows: list[tuple[int, int, float]] = []
        columns = [(ids, numbers, list(zip(*value_rows, strict=True))) for ids, numbers, value_rows
                   in groups.values()]
        for ids, numbers, group_columns in columns:
            for sid, column in zip(ids, group_columns, strict=True):
                rows += zip(repeat(sid), numbers, column)
        conn.execute("SAVEPOINT tv_steps")
        if (_insert_many(conn, _INSERT_POINT, _INSERT_POINTS, rows) != len(rows)
                or _insert_many(conn, _INSERT_STEP, _INSERT_STEPS, times) != len(times)):
            conn.execute("ROLLBACK TO tv_steps")  # something was there: step by step
            conn.execute("RELEASE tv_steps")
            for step in steps:
                self._write_step(conn, self._run_ids[step.run], step, values_of(step))
            return
        conn.execute("RELEASE tv_steps")
        for ids, numbers, group_columns in columns:
            self._blocks.added_columns(ids, numbers, group_columns)
        progress: dict[int, tuple[float, int]] = {}
        for (run_id, rank, number, time_), step in zip(times, steps, strict=True):
            self._steps.added(run_id, rank, time_)
            t, n = progress.get(run_id, (time_, number))
            progress[run_id] = (max(t, time_), max(n, number))
            if step.clip is not None:
                _write_clip(conn, run_id, step)
            if step.origin is not None:
                _write_origin(conn, run_id, step)
        conn.executemany(_RUN_PROGRESS, [(t, n, n, run_id)
                                         for run_id, (t, n) in progress.items()])

    def _advance(self, conn: sqlite3.Connection, stream_id: int) -> int:
        """The stream's contiguous high-water mark: every seq up to it is stored (-1: not 0).

        Records may arrive out of order or with gaps (a sender resending after a failed
        commit); the mark moves only over seqs that are all present, so an ack of it
        promises the sender that nothing up to it needs resending.
        """
        mark = self._high_water.get(stream_id, -1)
        if conn.execute("SELECT 1 FROM seen WHERE stream_id=? AND seq=?",
                        (stream_id, mark + 1)).fetchone() is not None:
            # the first stored seq after the mark whose successor is missing ends the run
            (mark,) = conn.execute(
                "SELECT s.seq FROM seen s WHERE s.stream_id=? AND s.seq>? AND NOT EXISTS "
                "(SELECT 1 FROM seen t WHERE t.stream_id=s.stream_id AND t.seq=s.seq+1) "
                "ORDER BY s.seq LIMIT 1", (stream_id, mark)).fetchone()
            self._high_water[stream_id] = mark
        return mark

    def _forget_ids(self) -> None:
        self._run_ids.clear()
        self._series_ids.clear()
        self._layouts.clear()
        self._stream_ids.clear()
        self._high_water.clear()

    def _first_time(self, conn: sqlite3.Connection, record: Record) -> bool:
        stream_id = self._stream_id(conn, record)
        cur = conn.execute("INSERT OR IGNORE INTO seen(stream_id, seq) VALUES (?, ?)",
                           (stream_id, record.seq))
        return cur.rowcount == 1

    def _apply(self, conn: sqlite3.Connection, record: Record, values_of: ValuesOf) -> None:
        run_id = self._run_id(conn, record.run, record.time)
        if isinstance(record, Step):
            self._write_step(conn, run_id, record, values_of(record))
        elif isinstance(record, RunStart):
            conn.execute(
                "UPDATE runs SET status='running', reason='', updated=?, "
                "world_size=max(world_size, ?), "
                "config=CASE WHEN config='{}' THEN ? ELSE config END WHERE id=?",
                (record.time, record.world_size, dumps_json(record.config), run_id))
            conn.execute("UPDATE streams SET host=?, pid=?, versions=?, started=? WHERE id=?",
                         (record.host, record.pid, dumps_json(record.versions), record.time,
                          self._stream_id(conn, record)))
        elif isinstance(record, RunEnd):
            self._end_stream(conn, run_id, record)

    def _write_step(self, conn: sqlite3.Connection, run_id: int, step: Step,
                    values: dict[str, float]) -> None:
        rows = [(self._series_id(conn, run_id, step, name), step.step, value)
                for name, value in values.items()]
        new = conn.executemany(_INSERT_POINT, rows).rowcount
        if new == len(rows):
            self._blocks.added(rows)
        else:  # the step was written before: its values replace the stored ones
            conn.executemany("INSERT OR REPLACE INTO points(series_id, step, value) "
                             "VALUES (?,?,?)", rows)
            self._blocks.rewritten(rows)
        self._write_time(conn, run_id, step)
        if step.clip is not None:
            _write_clip(conn, run_id, step)
        if step.origin is not None:
            _write_origin(conn, run_id, step)
        conn.execute(_RUN_PROGRESS, (step.time, step.step, step.step, run_id))

    def _write_time(self, conn: sqlite3.Connection, run_id: int, step: Step) -> None:
        """The step's row in ``steps`` (a later record of the step replaces its time), and
        what that did, for ``run_steps``."""
        key = (run_id, step.rank, step.step)
        if conn.execute(_INSERT_STEP, (*key, step.time)).rowcount == 1:
            self._steps.added(run_id, step.rank, step.time)
            return
        (old,) = conn.execute("SELECT time FROM steps WHERE run_id=? AND rank=? AND step=?",
                              key).fetchone()
        if old != step.time:
            conn.execute("UPDATE steps SET time=? WHERE run_id=? AND rank=? AND step=?",
                         (step.time, *key))
            self._steps.replaced(run_id, step.rank, old, step.time)

    def _end_stream(self, conn: sqlite3.Connection, run_id: int, end: RunEnd) -> None:
        conn.execute("UPDATE streams SET ended=?, status=?, reason=?, dropped=? WHERE id=?",
                     (end.time, end.status, end.reason, end.dropped,
                      self._stream_id(conn, end)))
        # A run is over when the latest session of every rank has ended (an earlier session
        # was resumed, whether it ended or was killed); crashed, and why, if any of those crashed.
        latest = "SELECT max(id) FROM streams WHERE run_id=? GROUP BY rank"
        (open_streams,) = conn.execute(
            f"SELECT count(*) FROM streams WHERE ended IS NULL AND id IN ({latest})",
            (run_id,)).fetchone()
        if open_streams:
            return
        crashed = conn.execute(
            f"SELECT reason FROM streams WHERE status='crashed' AND id IN ({latest}) "
            "ORDER BY ended DESC, id DESC LIMIT 1", (run_id,)).fetchone()
        status, reason = ("crashed", crashed[0]) if crashed else ("finished", end.reason)
        conn.execute("UPDATE runs SET status=?, reason=?, updated=max(updated, ?) WHERE id=?",
                     (status, reason, end.time, run_id))

    def _run_id(self, conn: sqlite3.Connection, name: str, time: float) -> int:
        if name not in self._run_ids:
            found = conn.execute("SELECT id FROM runs WHERE name=?", (name,)).fetchone()
            if found is None:
                limit = self.limits.max_runs
                if limit is not None and _count(conn, "SELECT count(*) FROM runs") >= limit:
                    raise LimitExceeded.runs(limit, name)
                found = _inserted(conn, "INSERT INTO runs(name, created, updated) VALUES (?,?,?)",
                                  name, time, time)
            self._run_ids[name] = int(found[0])
        return self._run_ids[name]

    def _stream_id(self, conn: sqlite3.Connection, record: Record) -> int:
        run_id = self._run_id(conn, record.run, record.time)
        key = (run_id, record.rank, record.session)
        if key not in self._stream_ids:
            conn.execute("INSERT OR IGNORE INTO streams(run_id, rank, session) VALUES (?,?,?)",
                         key)
            (self._stream_ids[key],) = conn.execute(
                "SELECT id FROM streams WHERE run_id=? AND rank=? AND session=?", key).fetchone()
        return self._stream_ids[key]

    def _series_id(self, conn: sqlite3.Connection, run_id: int, step: Step, name: str) -> int:
        key = (run_id, step.rank, name)
        if key not in self._series_ids:
            found = conn.execute("SELECT id FROM series WHERE run_id=? AND rank=? AND name=?",
                                 key).fetchone()
            if found is None:
                limit = self.limits.max_series_per_run
                if limit is not None and _count(
                        conn, "SELECT count(*) FROM series WHERE run_id=?", run_id) >= limit:
                    raise LimitExceeded.series(limit, step.run, name)
                found = _inserted(conn, "INSERT INTO series(run_id, rank, name) VALUES (?,?,?)",
                                  *key)
            self._series_ids[key] = int(found[0])
        return self._series_ids[key]


def _count(conn: sqlite3.Connection, sql: str, *params: Any) -> int:
    return int(conn.execute(sql, params).fetchone()[0])


def _inserted(conn: sqlite3.Connection, sql: str, *params: Any) -> tuple[int]:
    """Run an INSERT; the new row's id, shaped like a fetched ``(id,)`` row."""
    row_id = conn.execute(sql, params).lastrowid
    assert row_id is not None
    return (row_id,)


def _streams_lead_run_ends(records: Sequence[Record]) -> bool:
    """Whether every stream of ``records`` first appears before any run end among them. The
    bulk path makes every stream first, and a run end asks which streams of its run are still
    open: a stream that the record loop would only make after the end must not count."""
    seen: set[Stream] = set()
    last_new = ended = -1
    for i, record in enumerate(records):
        key = (record.run, record.rank, record.session)
        if key not in seen:
            seen.add(key)
            last_new = i
        if isinstance(record, RunEnd) and ended < 0:
            ended = i
    return ended < 0 or last_new <= ended


_CHUNK = 256  # rows per multi-row INSERT (3 or 4 parameters each: far below SQLite's 32,766)
# The rows of a multi-row INSERT, doubled up to _CHUNK (text written here, nothing of a value)
_POINT = "(?,?,?)"
_POINTS_2 = f"{_POINT},{_POINT}"
_POINTS_4 = f"{_POINTS_2},{_POINTS_2}"
_POINTS_8 = f"{_POINTS_4},{_POINTS_4}"
_POINTS_16 = f"{_POINTS_8},{_POINTS_8}"
_POINTS_32 = f"{_POINTS_16},{_POINTS_16}"
_POINTS_64 = f"{_POINTS_32},{_POINTS_32}"
_POINTS_128 = f"{_POINTS_64},{_POINTS_64}"
_POINTS_256 = f"{_POINTS_128},{_POINTS_128}"
_STEP = "(?,?,?,?)"
_STEPS_2 = f"{_STEP},{_STEP}"
_STEPS_4 = f"{_STEPS_2},{_STEPS_2}"
_STEPS_8 = f"{_STEPS_4},{_STEPS_4}"
_STEPS_16 = f"{_STEPS_8},{_STEPS_8}"
_STEPS_32 = f"{_STEPS_16},{_STEPS_16}"
_STEPS_64 = f"{_STEPS_32},{_STEPS_32}"
_STEPS_128 = f"{_STEPS_64},{_STEPS_64}"
_STEPS_256 = f"{_STEPS_128},{_STEPS_128}"
_SEEN = "(?,?)"
_SEENS_2 = f"{_SEEN},{_SEEN}"
_SEENS_4 = f"{_SEENS_2},{_SEENS_2}"
_SEENS_8 = f"{_SEENS_4},{_SEENS_4}"
_SEENS_16 = f"{_SEENS_8},{_SEENS_8}"
_SEENS_32 = f"{_SEENS_16},{_SEENS_16}"
_SEENS_64 = f"{_SEENS_32},{_SEENS_32}"
_SEENS_128 = f"{_SEENS_64},{_SEENS_64}"
_SEENS_256 = f"{_SEENS_128},{_SEENS_128}"
_INTO_POINTS = "INSERT OR IGNORE INTO points(series_id, step, value) VALUES "
_INTO_STEPS = "INSERT OR IGNORE INTO steps(run_id, rank, step, time) VALUES "
_INTO_SEEN = "INSERT OR IGNORE INTO seen(stream_id, seq) VALUES "
_INSERT_POINT = f"{_INTO_POINTS}{_POINT}"
_INSERT_POINTS = f"{_INTO_POINTS}{_POINTS_256}"
_INSERT_STEP = f"{_INTO_STEPS}{_STEP}"
_INSERT_STEPS = f"{_INTO_STEPS}{_STEPS_256}"
_INSERT_SEEN = f"{_INTO_SEEN}{_SEEN}"
_INSERT_SEENS = f"{_INTO_SEEN}{_SEENS_256}"

_RUN_PROGRESS = ("UPDATE runs SET updated=max(updated, ?), "
                 "last_step=max(coalesce(last_step, ?), ?) WHERE id=?")


def _insert_many(conn: sqlite3.Connection, one: str, many: str,
                 rows: Sequence[tuple[Any, ...]]) -> int:
    """``executemany(one, rows)`` as multi-row INSERTs (``many``: the same of ``_CHUNK``
    rows; the rest by ``executemany``); how many rows were inserted.

    ``executemany`` lets go of the GIL around every row's ``sqlite3_step`` and must win it
    back for the next: while the event loop's thread decodes frames, each row can wait for
    it. One statement of 256 rows binds them all under the GIL and runs them in one step
    without it. Rows go in their order either way, so "the first one wins" (OR IGNORE) is the
    same."""
    done, full = 0, len(rows) - len(rows) % _CHUNK
    for at in range(0, full, _CHUNK):
        done += conn.execute(many, list(chain.from_iterable(rows[at:at + _CHUNK]))).rowcount
    if full < len(rows):
        done += conn.executemany(one, rows[full:]).rowcount
    return done


def _write_clip(conn: sqlite3.Connection, run_id: int, step: Step) -> None:
    c = step.clip
    assert c is not None
    conn.execute("INSERT OR REPLACE INTO clips VALUES (?,?,?,?,?,?,?,?)",
                 (run_id, step.rank, step.step, _real(c.raw), _real(c.threshold), c.action,
                  c.reason, dumps_json(c.components)))


def _write_origin(conn: sqlite3.Connection, run_id: int, step: Step) -> None:
    """Insert the step's origin, or complete the stored one of the same origin step."""
    o = step.origin
    assert o is not None
    conn.execute(
        "INSERT INTO origins VALUES (?,?,?,?,?,?,?,?,?,?,?) "
        "ON CONFLICT (run_id, rank, step) DO UPDATE SET "
        "reported_step=max(reported_step, excluded.reported_step), kind=excluded.kind, "
        "stage=excluded.stage, "
        "module=coalesce(excluded.module, module), "
        "module_type=coalesce(excluded.module_type, module_type), "
        "param=coalesce(excluded.param, param), op=coalesce(excluded.op, op), "
        "source=coalesce(excluded.source, source)",
        (run_id, step.rank, o.step, step.step, o.kind, o.stage, o.module, o.module_type, o.param,
         o.op, o.source))


def _real(value: float) -> float | None:
    return None if math.isnan(value) else value
