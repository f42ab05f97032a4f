"""The embedded default store: one SQLite file in WAL mode, written by one thread.

NaN: SQLite turns a NaN REAL into NULL, so in ``points.value`` NULL *means* NaN (nothing else
is ever NULL there). ±Inf are stored natively. JSON columns use the wire encoding of floats.
"""

from __future__ import annotations

import math
import sqlite3
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from trainvitals.protocol import float_from_wire
from trainvitals.server.alerts import Alert
from trainvitals.server.alerts.incidents import Incident
from trainvitals.server.store import (
    ClipRow,
    OriginRow,
    RunRow,
    SeriesData,
    SeriesInfo,
)
from trainvitals.server.store.codec import (
    decode_details,
    dumps_json,
    hi_step,
    lo_step,
    loads_json,
    steps_per_second,
)
from trainvitals.server.store.downsample import SQLITE_M4, by_blocks, columns
from trainvitals.server.store.incident_rows import (
    incident_from_row,
    incident_values,
)
from trainvitals.server.store.limits import Limits
from trainvitals.server.store.run_steps import PendingSteps
from trainvitals.server.store.sqlite.blocks import PendingBlocks, block_m4
from trainvitals.server.store.sqlite.migrate import migrate
from trainvitals.server.store.sqlite.schema import SCHEMA, SCHEMA_VERSION
from trainvitals.server.store.sqlite.write import SQLiteWrites

__all__ = ["SQLiteStore"]

Stream = tuple[str, int, str]


def configure(conn: sqlite3.Connection) -> sqlite3.Connection:
    """Pragmas for every connection, in one place: WAL, relaxed fsync, wait on locks."""
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")  # durable at checkpoints; WAL keeps it consistent
    conn.execute("PRAGMA busy_timeout=5000")
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


class SQLiteStore(SQLiteWrites):
    """``Store`` on one SQLite file. Writes from one thread; reads from any (own connection)."""

    def __init__(self, path: Path | str, *, limits: Limits | None = None) -> None:
        self.path = Path(path)
        self.limits = limits or Limits()
        self._local = threading.local()
        self._writer: sqlite3.Connection | None = None
        self._run_ids: dict[str, int] = {}
        self._series_ids: dict[tuple[int, int, str], int] = {}
        self._stream_ids: dict[tuple[int, int, str], int] = {}
        # (run id, rank, the value names of a step, in order) -> their series ids
        self._layouts: dict[tuple[int, int, tuple[str, ...]], tuple[int, ...]] = {}
        # stream id -> highest seq up to which every seq is in `seen` (derivable; a cache)
        self._high_water: dict[int, int] = {}
        self._blocks = PendingBlocks()  # block summaries of the write in progress
        self._steps = PendingSteps()  # what the write in progress did to `steps`

    # ---------------------------------------------------------------- lifecycle

    def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = self._write_conn()
        # Check the version before running SCHEMA: its statements may not apply to another
        # version's tables (and must not change a file this server will refuse).
        found = None
        if conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='meta'"
                        ).fetchone() is not None:
            found = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        if found is not None and int(found[0]) != SCHEMA_VERSION:
            migrate(conn, self.path, int(found[0]))  # or refuse, touching nothing
        with conn:
            conn.executescript(SCHEMA)
            conn.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)",
                         (SCHEMA_VERSION,))

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def _write_conn(self) -> sqlite3.Connection:
        if self._writer is None:
            self._writer = configure(sqlite3.connect(self.path, check_same_thread=False))
        return self._writer

    def _read_conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = configure(sqlite3.connect(self.path, check_same_thread=False))
            self._local.conn = conn
        return conn

    def save_alerts(self, alerts: Iterable[Alert]) -> None:
        conn = self._write_conn()
        try:
            self._save_alerts(conn, alerts)
        except BaseException:
            self._forget_ids()
            raise

    def save_incidents(self, incidents: Iterable[Incident]) -> None:
        conn = self._write_conn()
        try:
            with conn:
                for incident in incidents:
                    run_id = self._run_id(conn, incident.run, 0.0)
                    conn.execute(_UPSERT_INCIDENT,
                                 (run_id, incident.number, *incident_values(incident)))
        except BaseException:
            self._forget_ids()
            raise

    def incidents(self, *, run: str | None = None, state: str | None = None
                  ) -> list[Incident]:
        rows = self._read_conn().execute(
            "SELECT r.name, i.number, i.kind, i.severity, i.state, i.onset_step, i.rank, "
            "i.opened_step, i.last_step, i.resolved_step, i.headline, i.remedy, i.body "
            "FROM incidents i JOIN runs r ON r.id=i.run_id WHERE (? IS NULL OR r.name=?) AND "
            "(? IS NULL OR i.state=? OR (?='open' AND i.state='escalated')) "
            "ORDER BY r.created DESC, r.id DESC, i.number",
            (run, run, state, state, state)).fetchall()
        return [incident_from_row(row[0], row[1], tuple(row[2:])) for row in rows]

    def _save_alerts(self, conn: sqlite3.Connection, alerts: Iterable[Alert]) -> None:
        with conn:
            for a in alerts:
                run_id = self._run_id(conn, a.run, 0.0)
                values = (a.severity, a.state, a.first_step, a.opened_step, a.last_step,
                          a.resolved_step, a.count, a.message, dumps_json(a.details))
                cur = conn.execute(
                    "UPDATE alerts SET severity=?, state=?, first_step=?, opened_step=?, "
                    "last_step=?, resolved_step=?, count=?, message=?, details=? "
                    "WHERE run_id=? AND rank=? AND rule=? AND series=? AND state='open'",
                    (*values, run_id, a.rank, a.rule, a.series))
                if cur.rowcount == 0:
                    conn.execute(
                        "INSERT INTO alerts(run_id, rank, rule, series, severity, state, "
                        "first_step, opened_step, last_step, resolved_step, count, message, "
                        "details) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                        (run_id, a.rank, a.rule, a.series, *values))

    # ---------------------------------------------------------------- maintenance

    def delete_run(self, run_id: int) -> None:
        """Delete a run and everything recorded for it, in one transaction (writer thread)."""
        conn = self._write_conn()
        try:
            with conn:
                for sql in _DELETE_RUN:
                    conn.execute(sql, (run_id,))
        finally:
            self._forget_ids()  # ids cached for the run are gone; the others are cheap to reload

    def size_bytes(self) -> int:
        """Bytes of pages in use. Deleted rows free pages that new rows reuse, so the file
        stops growing once retention deletes as much as is written (it never shrinks)."""
        conn = self._write_conn()
        (pages,) = conn.execute("PRAGMA page_count").fetchone()
        (free,) = conn.execute("PRAGMA freelist_count").fetchone()
        (page_size,) = conn.execute("PRAGMA page_size").fetchone()
        return int((pages - free) * page_size)

    def ping(self) -> None:
        self._read_conn().execute("SELECT count(*) FROM meta").fetchone()

    def probe(self) -> None:
        """One row of ``meta`` rewritten: a real commit through the write-ahead log, so it
        fails as a write would (disk full, database locked)."""
        with self._write_conn() as conn:
            conn.execute("INSERT OR REPLACE INTO meta VALUES ('probed_at', ?)",
                         (repr(time.time()),))

    # ---------------------------------------------------------------- reads

    def runs(self) -> list[RunRow]:
        rows = self._read_conn().execute(f"{_RUN_SELECT} ORDER BY r.created DESC, r.id DESC")
        return [self._run_row(row) for row in rows.fetchall()]

    def run(self, run_id: int) -> RunRow | None:
        row = self._read_conn().execute(f"{_RUN_SELECT} WHERE r.id=?", (run_id,)).fetchone()
        return None if row is None else self._run_row(row)

    def _run_row(self, row: tuple[Any, ...]) -> RunRow:
        (run_id, name, status, created, updated, last_step, world, reason, config) = row[:9]
        # Every query is an index seek (no scan of a run's steps): streams by their unique
        # (run_id, rank, session), the summary in run_steps, open alerts by one_open_alert,
        # incidents by their key, the latest steps by the key of steps.
        conn = self._read_conn()
        per_rank = conn.execute(
            "SELECT rank, sum(dropped) FROM streams WHERE run_id=? GROUP BY rank ORDER BY rank",
            (run_id,)).fetchall()
        ranks = [rank for rank, _ in per_rank]
        dropped = sum(n for _, n in per_rank)
        steps, t0, t1 = conn.execute(
            "SELECT coalesce(sum(steps), 0), min(first_time), max(last_time) FROM run_steps "
            "WHERE run_id=?", (run_id,)).fetchone()
        open_alerts = dict(conn.execute(
            "SELECT severity, count(*) FROM alerts WHERE run_id=? AND state='open' "
            "GROUP BY severity", (run_id,)).fetchall())
        open_incidents, incidents = {}, 0
        for severity, is_open, n in conn.execute(
                "SELECT severity, state!='resolved', count(*) FROM incidents WHERE run_id=? "
                "GROUP BY 1, 2", (run_id,)):
            incidents += n
            if is_open:
                open_incidents[severity] = n
        recent = conn.execute(  # the lowest rank's latest steps, newest first (index order)
            "SELECT step, time FROM steps WHERE run_id=? AND rank=? ORDER BY step DESC LIMIT 100",
            (run_id, min(ranks, default=0))).fetchall()
        return RunRow(run_id, name, status, created, updated, last_step, world, ranks, dropped,
                      reason, loads_json(config), steps, t0, t1, open_alerts,
                      steps_per_second(recent), open_incidents, incidents)

    def series_list(self, run_id: int) -> list[SeriesInfo]:
        rows = self._read_conn().execute(
            "SELECT s.name, s.rank, (SELECT coalesce(sum(b.count), 0) FROM point_blocks b "
            "WHERE b.series_id=s.id) "
            "FROM series s WHERE s.run_id=? ORDER BY s.name, s.rank", (run_id,))
        return [SeriesInfo(*row) for row in rows.fetchall()]

    def series(self, run_id: int, name: str, *, rank: int | None = None,
               start: int | None = None, end: int | None = None,
               limit: int | None = None) -> list[SeriesData]:
        conn = self._read_conn()
        found = conn.execute(
            "SELECT id, rank FROM series WHERE run_id=? AND name=? AND (? IS NULL OR rank=?) "
            "ORDER BY rank", (run_id, name, rank, rank)).fetchall()
        out = []
        for series_id, series_rank in found:
            rows = conn.execute(
                "SELECT step, value FROM points WHERE series_id=? AND step>=? AND step<=? "
                "ORDER BY step LIMIT ?",
                (series_id, lo_step(start), hi_step(end),
                 -1 if limit is None else limit)).fetchall()
            out.append(SeriesData(name, series_rank, [s for s, _ in rows],
                                  [math.nan if v is None else v for _, v in rows]))
        return out

    def series_m4(self, run_id: int, name: str, *, rank: int | None = None,
                  start: int | None = None, end: int | None = None,
                  buckets: int) -> list[SeriesData]:
        conn = self._read_conn()
        found = conn.execute(
            "SELECT id, rank FROM series WHERE run_id=? AND name=? AND (? IS NULL OR rank=?) "
            "ORDER BY rank", (run_id, name, rank, rank)).fetchall()
        within = (lo_step(start), hi_step(end))
        return [SeriesData(name, series_rank, *_m4(conn, series_id, within, buckets))
                for series_id, series_rank in found]

    def clips(self, run_id: int, *, start: int | None = None, end: int | None = None,
              limit: int | None = None) -> list[ClipRow]:
        rows = self._read_conn().execute(
            "SELECT rank, step, raw, threshold, action, reason, components FROM clips "
            "WHERE run_id=? AND step>=? AND step<=? ORDER BY step, rank LIMIT ?",
            (run_id, lo_step(start), hi_step(end), -1 if limit is None else limit)).fetchall()
        return [ClipRow(rank, step, _float(raw), _float(thr), action, reason,
                        {k: float_from_wire(v) for k, v in loads_json(comps).items()})
                for rank, step, raw, thr, action, reason, comps in rows]

    def alerts(self, *, run: str | None = None, state: str | None = None) -> list[Alert]:
        rows = self._read_conn().execute(
            "SELECT r.name, a.rank, a.rule, a.series, a.severity, a.state, a.first_step, "
            "a.opened_step, a.last_step, a.resolved_step, a.count, a.message, a.details "
            "FROM alerts a JOIN runs r ON r.id=a.run_id "
            "WHERE (? IS NULL OR r.name=?) AND (? IS NULL OR a.state=?) ORDER BY a.id DESC",
            (run, run, state, state)).fetchall()
        return [Alert(run=row[0], rank=row[1], rule=row[2], series=row[3], severity=row[4],
                      state=row[5], first_step=row[6], opened_step=row[7], last_step=row[8],
                      resolved_step=row[9], count=row[10], message=row[11],
                      details=decode_details(loads_json(row[12])))
                for row in rows]

    def origins(self, run_id: int) -> list[OriginRow]:
        rows = self._read_conn().execute(
            "SELECT rank, step, reported_step, kind, stage, module, module_type, param, op, "
            "source "
            "FROM origins WHERE run_id=? ORDER BY step, rank", (run_id,)).fetchall()
        return [OriginRow(*row) for row in rows]

    def run_id(self, name: str) -> int | None:
        """The id of the run called ``name``, if it exists."""
        row = self._read_conn().execute("SELECT id FROM runs WHERE name=?", (name,)).fetchone()
        return None if row is None else int(row[0])


# Children first: foreign keys are on. Each statement takes the run id once.
_DELETE_RUN = (
    "DELETE FROM seen WHERE stream_id IN (SELECT id FROM streams WHERE run_id=?)",
    "DELETE FROM points WHERE series_id IN (SELECT id FROM series WHERE run_id=?)",
    "DELETE FROM point_blocks WHERE series_id IN (SELECT id FROM series WHERE run_id=?)",
    "DELETE FROM series WHERE run_id=?",
    "DELETE FROM steps WHERE run_id=?",
    "DELETE FROM run_steps WHERE run_id=?",
    "DELETE FROM clips WHERE run_id=?",
    "DELETE FROM origins WHERE run_id=?",
    "DELETE FROM alerts WHERE run_id=?",
    "DELETE FROM incidents WHERE run_id=?",
    "DELETE FROM streams WHERE run_id=?",
    "DELETE FROM runs WHERE id=?",
)

# The first and last step a series holds in [start, end]: two index seeks (min and max in one
# SELECT would read every point of the range).
_HELD = ("SELECT (SELECT min(step) FROM points WHERE series_id=? AND step BETWEEN ? AND ?), "
         "(SELECT max(step) FROM points WHERE series_id=? AND step BETWEEN ? AND ?)")

_RUN_SELECT = ("SELECT r.id, r.name, r.status, r.created, r.updated, r.last_step, r.world_size, "
               "r.reason, r.config FROM runs r")


def _m4(conn: sqlite3.Connection, series_id: int, within: tuple[int, int],
        buckets: int) -> tuple[list[int], list[float]]:
    """One series' M4 points in [start, end] = ``within`` (see ``downsample.m4``)."""
    # The queries are in trainvitals.server.store.downsample (equal columns, point by point) and
    # trainvitals.server.store.sqlite.blocks (columns of whole blocks, from their summaries).
    lo, hi = conn.execute(_HELD, (series_id, *within, series_id, *within)).fetchone()
    if lo is None:
        return [], []
    if by_blocks(lo, hi, buckets):
        return block_m4(conn, series_id, columns(lo, hi, buckets), within)
    rows = conn.execute(SQLITE_M4, {"sid": series_id, "start": lo, "span": hi - lo + 1,
                                    "b": min(buckets, hi - lo + 1)}).fetchall()
    return [s for s, _ in rows], [math.nan if v is None else v for _, v in rows]


def _float(value: float | None) -> float:
    return math.nan if value is None else value


# The columns in the order of incident_rows.INCIDENT_COLUMNS (a test holds them together).
_UPSERT_INCIDENT = (
    "INSERT OR REPLACE INTO incidents(run_id, number, kind, severity, state, onset_step, rank, "
    "opened_step, last_step, resolved_step, headline, remedy, body) "
    "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)")
