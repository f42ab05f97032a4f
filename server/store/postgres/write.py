"""One ``PostgresStore.write``: a transaction that several replicas may run at the same time.

How it stays right when other replicas write into the same database:

- **Runs are locked first, in id order** (``trainvitals.server.store.postgres.ids``): writes of one
  run take turns, whichever replica they come through, and never deadlock.
- **Exactly once.** ``seen`` gets every (stream, seq) in one ``INSERT … ON CONFLICT DO NOTHING
  RETURNING``; only the records it returns are applied, in the same transaction.
- **High-water marks come from ``seen``.** The cached mark is only where the walk starts: every
  seq up to it is stored (rows are never taken back), whichever replica stored them.
- **Limits are checked on the database's counts** inside the transaction; ``LimitExceeded``
  rolls the whole write back.
- **The runs list's step counts** (``run_steps``) are merged in the same transaction, from the
  step rows it inserted or whose time it replaced (``trainvitals.server.store.run_steps``).

Consecutive steps are written in bulk: their points and step times by binary ``COPY`` (or, when
a step is written again, one ``INSERT … ON CONFLICT DO UPDATE`` per table), the rest with one
statement per table. Run starts and ends are applied where they stand between them, so the
outcome is the one SQLite's record-by-record loop gives.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from psycopg.errors import UniqueViolation

from trainvitals.protocol import Record, RunEnd, RunStart, Step
from trainvitals.protocol.series import ValuesOf, step_values
from trainvitals.server.alerts import Alert
from trainvitals.server.alerts.incidents import Incident
from trainvitals.server.store import WriteResult
from trainvitals.server.store.codec import dumps_json
from trainvitals.server.store.incident_rows import incident_values
from trainvitals.server.store.limits import Limits
from trainvitals.server.store.postgres.ids import IdCache, Ids, Stream
from trainvitals.server.store.postgres.sql import (
    COPY_POINTS,
    COPY_STEPS,
    HIGH_WATER,
    INSERT_CLIP,
    INSERT_SEEN,
    RUN_STEPS_ADD,
    RUN_STEPS_COUNT,
    RUN_STEPS_SELECT,
    RUN_STEPS_SET,
    STORED_TIMES,
    UPDATE_RUN_PROGRESS,
    UPSERT_ALERT,
    UPSERT_INCIDENT,
    UPSERT_ORIGIN,
    UPSERT_POINTS,
    UPSERT_STEPS,
)
from trainvitals.server.store.run_steps import PendingSteps, merge

__all__ = ["WriteTransaction"]


class WriteTransaction:
    """The statements of one write, on a connection whose transaction the caller holds."""

    def __init__(self, conn: Any, cache: IdCache, limits: Limits) -> None:
        self.conn, self.cache = conn, cache
        self.ids = Ids(conn, cache, limits)
        self.steps = PendingSteps()  # what this transaction did to `steps`

    def write(self, records: Sequence[Record], values_of: ValuesOf = step_values
              ) -> WriteResult:
        """Apply what is new in ``records``; see the module docstring."""
        self.ids.lock_runs(records)
        stream_of = self.ids.streams(records)
        accepted = self._first_time(records, stream_of)
        self._apply(accepted, stream_of, values_of)
        self._flush_run_steps()
        marks = self._high_water(set(stream_of.values()))
        return WriteResult(accepted, dict(self.cache.runs),
                           {key: marks[sid] for key, sid in stream_of.items() if marks[sid] >= 0})

    # ------------------------------------------------------------------ exactly once

    def _first_time(self, records: Sequence[Record], stream_of: dict[Stream, int]
                    ) -> list[Record]:
        """The records whose (stream, seq) was never stored, in order, each once."""
        keys = sorted({(stream_of[(r.run, r.rank, r.session)], r.seq) for r in records})
        new = {(sid, seq) for sid, seq in self.conn.execute(
            INSERT_SEEN, ([k[0] for k in keys], [k[1] for k in keys])).fetchall()}
        accepted = []
        for r in records:
            key = (stream_of[(r.run, r.rank, r.session)], r.seq)
            if key in new:
                new.discard(key)  # a second copy in the same batch is a duplicate
                accepted.append(r)
        return accepted

    def _high_water(self, stream_ids: set[int]) -> dict[int, int]:
        sids = sorted(stream_ids)
        rows = self.conn.execute(HIGH_WATER, (sids, [self.cache.high_water.get(s, -1)
                                                     for s in sids])).fetchall()
        for sid, mark in rows:
            self.cache.high_water[sid] = mark
        return {sid: mark for sid, mark in rows}

    # ------------------------------------------------------------------ applying records

    def _apply(self, accepted: list[Record], stream_of: dict[Stream, int],
               values_of: ValuesOf) -> None:
        steps: list[Step] = []
        for record in accepted:
            if isinstance(record, Step):
                steps.append(record)
                continue
            self._write_steps(steps, values_of)
            steps = []
            stream_id = stream_of[(record.run, record.rank, record.session)]
            if isinstance(record, RunStart):
                self._start_stream(record, stream_id)
            elif isinstance(record, RunEnd):
                self._end_stream(record, stream_id)
        self._write_steps(steps, values_of)

    def _write_steps(self, steps: list[Step], values_of: ValuesOf) -> None:
        """Consecutive steps in one statement per table; a later copy of a row wins."""
        if not steps:
            return
        values = [values_of(s) for s in steps]
        series = self.ids.series(steps, values)
        points: dict[tuple[int, int], float] = {}
        times: dict[tuple[int, int, int], float] = {}
        progress: dict[int, tuple[float, int]] = {}
        for s, named in zip(steps, values, strict=True):
            run_id = self.cache.runs[s.run]
            for name, value in named.items():
                points[(series[(run_id, s.rank, name)], s.step)] = value
            times[(run_id, s.rank, s.step)] = s.time
            t, n = progress.get(run_id, (s.time, s.step))
            progress[run_id] = (max(t, s.time), max(n, s.step))
        self._insert_rows(points, times)
        clips = {(self.cache.runs[s.run], s.rank, s.step): s.clip for s in steps if s.clip}
        if clips:
            self.conn.cursor().executemany(INSERT_CLIP, [
                (*key, c.raw, c.threshold, c.action, c.reason, dumps_json(c.components))
                for key, c in clips.items()])
        for s in steps:
            if s.origin is not None:  # in order: a later record completes an earlier one
                o = s.origin
                self.conn.execute(UPSERT_ORIGIN, (
                    self.cache.runs[s.run], s.rank, o.step, s.step, o.kind, o.stage, o.module,
                    o.module_type, o.param, o.op, o.source))
        ids = sorted(progress)
        self.conn.execute(UPDATE_RUN_PROGRESS, (ids, [progress[i][0] for i in ids],
                                                [progress[i][1] for i in ids]))

    def _insert_rows(self, points: dict[tuple[int, int], float],
                     times: dict[tuple[int, int, int], float]) -> None:
        """COPY the rows; if one exists already (a resumed run writing a step again), the
        savepoint takes the COPY back and upserts replace the stored rows instead."""
        stored: dict[tuple[int, int, int], float] = {}
        try:
            with self.conn.transaction():  # a savepoint
                _copy(self.conn.cursor(), COPY_POINTS, ("int8", "int8", "float8"), points)
                _copy(self.conn.cursor(), COPY_STEPS, ("int8", "int8", "int8", "float8"), times)
        except UniqueViolation:
            keys = _columns(times, 3)[:3]
            stored = {(run_id, rank, step): t for run_id, rank, step, t in self.conn.execute(
                STORED_TIMES, keys).fetchall()}
            self.conn.execute(UPSERT_POINTS, _columns(points, 2))
            self.conn.execute(UPSERT_STEPS, _columns(times, 3))
        for key, t in times.items():
            old = stored.get(key)
            if old is None:
                self.steps.added(key[0], key[1], t)
            elif old != t:
                self.steps.replaced(key[0], key[1], old, t)

    def _flush_run_steps(self) -> None:
        """Merge what this transaction did to ``steps`` into ``run_steps``."""
        added: list[tuple[int, int, int, float, float]] = []
        for (run_id, rank), p in self.steps.items():
            if not p.replaced:
                added.append((run_id, rank, p.added, p.lo, p.hi))
                continue
            row = self.conn.execute(RUN_STEPS_SELECT, (run_id, rank)).fetchone()
            merged = merge(None if row is None else (row[0], row[1], row[2]), p)
            if merged is None:  # a replaced time was the first or last: count the rank again
                self.conn.execute(RUN_STEPS_COUNT, {"run": run_id, "rank": rank})
            else:
                self.conn.execute(RUN_STEPS_SET, [[run_id], [rank], *([v] for v in merged)])
        if added:
            self.conn.execute(RUN_STEPS_ADD, [list(column) for column in zip(*added,
                                                                              strict=True)])
        self.steps.clear()

    def _start_stream(self, start: RunStart, stream_id: int) -> None:
        self.conn.execute(
            "UPDATE runs SET status='running', reason='', updated=%s, "
            "world_size=greatest(world_size, %s), "
            "config=CASE WHEN config='{}' THEN %s ELSE config END WHERE id=%s",
            (start.time, start.world_size, dumps_json(start.config), self.cache.runs[start.run]))
        self.conn.execute(
            "UPDATE streams SET host=%s, pid=%s, versions=%s, started=%s WHERE id=%s",
            (start.host, start.pid, dumps_json(start.versions), start.time, stream_id))

    def _end_stream(self, end: RunEnd, stream_id: int) -> None:
        run_id = self.cache.runs[end.run]
        self.conn.execute("UPDATE streams SET ended=%s, status=%s, reason=%s, dropped=%s "
                          "WHERE id=%s", (end.time, end.status, end.reason, end.dropped, stream_id))
        # A run is over when the latest session of every rank has ended (an earlier session
        # was resumed, whether it ended or was killed); crashed, and why, if any of those
        # crashed. The run row is locked, so a replica ending another rank waits for this.
        latest = "SELECT max(id) FROM streams WHERE run_id=%(run)s GROUP BY rank"
        (open_streams,) = self.conn.execute(
            f"SELECT count(*) FROM streams WHERE ended IS NULL AND id IN ({latest})",
            {"run": run_id}).fetchone()
        if open_streams:
            return
        crashed = self.conn.execute(
            f"SELECT reason FROM streams WHERE status='crashed' AND id IN ({latest}) "
            "ORDER BY ended DESC, id DESC LIMIT 1", {"run": run_id}).fetchone()
        status, reason = ("crashed", crashed[0]) if crashed else ("finished", end.reason)
        self.conn.execute("UPDATE runs SET status=%s, reason=%s, updated=greatest(updated, %s) "
                          "WHERE id=%s", (status, reason, end.time, run_id))

    # ------------------------------------------------------------------ alerts

    def save_alerts(self, alerts: list[Alert]) -> None:
        """Update each alert's open row, or insert it (one open row per run/rank/rule/series)."""
        self.ids.lock_runs(alerts)
        for a in alerts:
            run_id = self.cache.runs[a.run]
            values = (a.severity, a.state, a.first_step, a.opened_step, a.last_step,
                      a.resolved_step, a.count, a.message, dumps_json(a.details))
            updated = self.conn.execute(
                "UPDATE alerts SET severity=%s, state=%s, first_step=%s, opened_step=%s, "
                "last_step=%s, resolved_step=%s, count=%s, message=%s, details=%s "
                "WHERE run_id=%s AND rank=%s AND rule=%s AND series=%s AND state='open'",
                (*values, run_id, a.rank, a.rule, a.series))
            if updated.rowcount == 0:
                self.conn.execute(UPSERT_ALERT, (run_id, a.rank, a.rule, a.series, *values))


    def save_incidents(self, incidents: list[Incident]) -> None:
        """Insert or replace each incident's row, keyed by (run, number)."""
        self.ids.lock_runs(incidents)
        for incident in incidents:
            self.conn.execute(UPSERT_INCIDENT, (self.cache.runs[incident.run], incident.number,
                                                *incident_values(incident)))


def _copy(cursor: Any, sql: str, types: tuple[str, ...], rows: dict[Any, Any]) -> None:
    """``{(a, b): v}`` COPYed in binary as rows ``(a, b, v)``, in key order."""
    with cursor.copy(sql) as copy:
        copy.set_types(list(types))
        for key in sorted(rows):
            copy.write_row((*key, rows[key]))


def _columns(rows: dict[Any, Any], width: int) -> list[list[Any]]:
    """``{(a, b): v}`` as the column lists ``[[a…], [b…], [v…]]`` (``width`` key parts)."""
    keys = sorted(rows)  # one order for every writer: rows are locked in it
    return [[k[i] for k in keys] for i in range(width)] + [[rows[k] for k in keys]]
