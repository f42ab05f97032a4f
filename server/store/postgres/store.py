"""The store for scale: one PostgreSQL database that several server replicas share.

Same semantics as ``SQLiteStore`` (the same test suite runs against both). NaN and ±Inf are
stored natively in ``double precision``; JSON columns hold text in the wire encoding of floats.
Writes run on the writer's own connection, one transaction per ``write`` (see
``trainvitals.server.store.postgres.write`` for how replicas writing at once stay exactly-once);
reads run on one autocommit connection per reading thread. Only ``create_app`` imports this
module, and only when ``database_url`` is set, so the server runs without psycopg otherwise.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any

import psycopg

from trainvitals.protocol import Record, float_from_wire
from trainvitals.protocol.series import ValuesOf, step_values
from trainvitals.server.alerts import Alert
from trainvitals.server.alerts.incidents import Incident
from trainvitals.server.security import redact_url
from trainvitals.server.store import (
    ClipRow,
    OriginRow,
    RunRow,
    SeriesData,
    SeriesInfo,
    WriteResult,
)
from trainvitals.server.store.codec import (
    decode_details,
    hi_step,
    lo_step,
    loads_json,
    steps_per_second,
)
from trainvitals.server.store.downsample import columns
from trainvitals.server.store.incident_rows import incident_from_row
from trainvitals.server.store.limits import Limits
from trainvitals.server.store.postgres.ids import IdCache
from trainvitals.server.store.postgres.schema import TABLES, create_or_check
from trainvitals.server.store.postgres.sql import (
    DISK_BYTES,
    M4,
    RUN_SELECT,
    TABLE_SIZES,
)
from trainvitals.server.store.postgres.write import WriteTransaction

__all__ = ["PostgresStore"]


class PostgresStore:
    """``Store`` on a PostgreSQL database (``postgresql://user:password@host:port/dbname``)."""

    def __init__(self, url: str, *, limits: Limits | None = None) -> None:
        self.url = url
        self.limits = limits or Limits()
        self._local = threading.local()
        self._readers: list[psycopg.Connection[Any]] = []  # every thread's, for close()
        self._readers_lock = threading.Lock()
        self._writer: psycopg.Connection[Any] | None = None
        self._writer_thread: int | None = None
        self._ids = IdCache()

    def __repr__(self) -> str:
        return f"PostgresStore({redact_url(self.url)!r})"

    # ---------------------------------------------------------------- lifecycle

    def open(self) -> None:
        create_or_check(self._write_conn(), redact_url(self.url))

    def close(self) -> None:
        with self._readers_lock:
            readers, self._readers = self._readers, []
        for conn in [*readers, self._writer]:
            if conn is not None:
                conn.close()
        self._writer = None

    def _connect(self) -> psycopg.Connection[Any]:
        try:
            return psycopg.connect(self.url, autocommit=True)
        except psycopg.Error as exc:  # not chained: libpq may quote the URL, password and all
            raise RuntimeError(f"cannot connect to {redact_url(self.url)}: "
                               f"{redact_url(str(exc))}") from None

    def _write_conn(self) -> psycopg.Connection[Any]:
        if self._writer is None or self._writer.closed or self._writer.broken:
            self._writer = self._connect()
            self._writer_thread = threading.get_ident()
        return self._writer

    def _read_conn(self) -> psycopg.Connection[Any]:
        conn: psycopg.Connection[Any] | None = getattr(self._local, "conn", None)
        if conn is None or conn.closed or conn.broken:
            conn = self._local.conn = self._connect()
            with self._readers_lock:
                self._readers.append(conn)
        return conn

    # ---------------------------------------------------------------- writes

    def write(self, records: Sequence[Record], values_of: ValuesOf = step_values
              ) -> WriteResult:
        conn = self._write_conn()
        try:
            with conn.transaction():
                return WriteTransaction(conn, self._ids, self.limits).write(records, values_of)
        except BaseException:
            self._ids.forget()  # the rollback may have taken ids cached during this write
            raise

    def save_alerts(self, alerts: Iterable[Alert]) -> None:
        conn = self._write_conn()
        try:
            with conn.transaction():
                WriteTransaction(conn, self._ids, self.limits).save_alerts(list(alerts))
        except BaseException:
            self._ids.forget()
            raise

    def save_incidents(self, incidents: Iterable[Incident]) -> None:
        conn = self._write_conn()
        try:
            with conn.transaction():
                WriteTransaction(conn, self._ids, self.limits).save_incidents(list(incidents))
        except BaseException:
            self._ids.forget()
            raise

    # ---------------------------------------------------------------- maintenance

    def delete_run(self, run_id: int) -> None:
        """Delete a run and everything recorded for it, in one transaction (writer thread)."""
        conn = self._write_conn()
        try:
            with conn.transaction():
                for sql in _DELETE_RUN:
                    conn.execute(sql, {"run": run_id})
        finally:
            self._ids.forget()  # ids cached for the run are gone; the others are cheap to reload

    def size_bytes(self) -> int:
        """Estimated bytes of live rows, with their share of indexes.

        A deleted row's space is reused by later rows (once autovacuum has run) but never
        returned, so, like ``SQLiteStore.size_bytes`` counting pages in use, each table's total
        size (``pg_total_relation_size``) is scaled by the share of its heap that live rows fill:
        live rows (the statistics) times their sampled size, over the heap's room. The file
        sizes themselves are ``disk_bytes``. On the writer's thread (retention) the writer's own
        statistics are flushed first, so what it just wrote or deleted counts.
        """
        if threading.get_ident() == self._writer_thread:
            conn = self._write_conn()
            if conn.info.server_version >= 150000:
                conn.execute("SELECT pg_stat_force_next_flush()")  # flushed once it is idle
        else:
            conn = self._read_conn()
        return sum(_live_bytes(*row) for row in conn.execute(TABLE_SIZES).fetchall())

    def ping(self) -> None:
        self._read_conn().execute("SELECT 1").fetchone()

    def probe(self) -> None:
        """One row of ``meta`` rewritten in a transaction: fails as a write would."""
        conn = self._write_conn()
        with conn.transaction():
            conn.execute("INSERT INTO meta VALUES ('probed_at', %s) ON CONFLICT (key) "
                         "DO UPDATE SET value = EXCLUDED.value", (repr(time.time()),))

    def disk_bytes(self) -> int:
        """Bytes our tables take on disk, indexes and TOAST included (what /metrics shows)."""
        row = self._read_conn().execute(DISK_BYTES, (list(TABLES),)).fetchone()
        return 0 if row is None else int(row[0])

    # ---------------------------------------------------------------- reads

    def runs(self) -> list[RunRow]:
        rows = self._read_conn().execute(f"{RUN_SELECT} ORDER BY r.created DESC, r.id DESC")
        return [_run_row(row) for row in rows.fetchall()]

    def run(self, run_id: int) -> RunRow | None:
        row = self._read_conn().execute(f"{RUN_SELECT} WHERE r.id = %s", (run_id,)).fetchone()
        return None if row is None else _run_row(row)

    def run_id(self, name: str) -> int | None:
        """The id of the run called ``name``, if it exists."""
        row = self._read_conn().execute("SELECT id FROM runs WHERE name = %s", (name,)).fetchone()
        return None if row is None else int(row[0])

    def series_list(self, run_id: int) -> list[SeriesInfo]:
        rows = self._read_conn().execute(
            "SELECT s.name, s.rank, (SELECT count(*) FROM points p WHERE p.series_id = s.id) "
            "FROM series s WHERE s.run_id = %s ORDER BY s.name, s.rank", (run_id,))
        return [SeriesInfo(*row) for row in rows.fetchall()]

    def series(self, run_id: int, name: str, *, rank: int | None = None,
               start: int | None = None, end: int | None = None,
               limit: int | None = None) -> list[SeriesData]:
        conn = self._read_conn()
        out = []
        for series_id, series_rank in self._series_ids(conn, run_id, name, rank):
            rows = conn.cursor(binary=True).execute(
                "SELECT step, value FROM points WHERE series_id = %s AND step BETWEEN %s AND %s "
                "ORDER BY step LIMIT %s::bigint",
                (series_id, lo_step(start), hi_step(end), limit)).fetchall()
            out.append(SeriesData(name, series_rank, [s for s, _ in rows], [v for _, v in rows]))
        return out

    def series_m4(self, run_id: int, name: str, *, rank: int | None = None,
                  start: int | None = None, end: int | None = None,
                  buckets: int) -> list[SeriesData]:
        conn = self._read_conn()
        out = []
        for series_id, series_rank in self._series_ids(conn, run_id, name, rank):
            lo, hi = conn.execute(
                "SELECT min(step), max(step) FROM points WHERE series_id = %s "
                "AND step BETWEEN %s AND %s", (series_id, lo_step(start), hi_step(end))
            ).fetchone() or (None, None)
            rows = [] if lo is None or hi is None else self._m4(conn, series_id,
                                                                  columns(lo, hi, buckets))
            out.append(SeriesData(name, series_rank, [s for s, _ in rows], [v for _, v in rows]))
        return out

    @staticmethod
    def _m4(conn: psycopg.Connection[Any], series_id: int,
            buckets: list[tuple[int, int]]) -> list[tuple[int, float]]:
        """M4 points of one series over the given columns (``downsample.columns``)."""
        return conn.cursor(binary=True).execute(M4, {
            "sid": series_id, "lo": [first for first, _ in buckets],
            "hi": [last for _, last in buckets]}).fetchall()

    @staticmethod
    def _series_ids(conn: psycopg.Connection[Any], run_id: int, name: str,
                    rank: int | None) -> list[tuple[int, int]]:
        return conn.execute(
            "SELECT id, rank FROM series WHERE run_id = %s AND name = %s "
            "AND (%s::bigint IS NULL OR rank = %s) ORDER BY rank",
            (run_id, name, rank, rank)).fetchall()

    def clips(self, run_id: int, *, start: int | None = None, end: int | None = None,
              limit: int | None = None) -> list[ClipRow]:
        rows = self._read_conn().execute(
            "SELECT rank, step, raw, threshold, action, reason, components FROM clips "
            "WHERE run_id = %s AND step BETWEEN %s AND %s ORDER BY step, rank LIMIT %s::bigint",
            (run_id, lo_step(start), hi_step(end), limit)).fetchall()
        return [ClipRow(rank, step, raw, thr, action, reason,
                        {k: float_from_wire(v) for k, v in loads_json(comps).items()})
                for rank, step, raw, thr, action, reason, comps in rows]

    def alerts(self, *, run: str | None = None, state: str | None = None) -> list[Alert]:
        rows = self._read_conn().execute(
            "SELECT r.name, a.rank, a.rule, a.series, a.severity, a.state, a.first_step, "
            "a.opened_step, a.last_step, a.resolved_step, a.count, a.message, a.details "
            "FROM alerts a JOIN runs r ON r.id = a.run_id "
            "WHERE (%s::text IS NULL OR r.name = %s) AND (%s::text IS NULL OR a.state = %s) "
            "ORDER BY a.id DESC", (run, run, state, state)).fetchall()
        return [Alert(run=row[0], rank=row[1], rule=row[2], series=row[3], severity=row[4],
                      state=row[5], first_step=row[6], opened_step=row[7], last_step=row[8],
                      resolved_step=row[9], count=row[10], message=row[11],
                      details=decode_details(loads_json(row[12])))
                for row in rows]

    def incidents(self, *, run: str | None = None, state: str | None = None
                  ) -> list[Incident]:
        rows = self._read_conn().execute(
            "SELECT r.name, i.number, i.kind, i.severity, i.state, i.onset_step, i.rank, "
            "i.opened_step, i.last_step, i.resolved_step, i.headline, i.remedy, i.body "
            "FROM incidents i JOIN runs r ON r.id = i.run_id "
            "WHERE (%s::text IS NULL OR r.name = %s) AND "
            "(%s::text IS NULL OR i.state = %s OR (%s = 'open' AND i.state = 'escalated')) "
            "ORDER BY r.created DESC, r.id DESC, i.number",
            (run, run, state, state, state)).fetchall()
        return [incident_from_row(row[0], row[1], tuple(row[2:])) for row in rows]

    def origins(self, run_id: int) -> list[OriginRow]:
        rows = self._read_conn().execute(
            "SELECT rank, step, reported_step, kind, stage, module, module_type, param, op, "
            "source FROM origins WHERE run_id = %s ORDER BY step, rank", (run_id,)).fetchall()
        return [OriginRow(*row) for row in rows]


# The run's row first, FOR UPDATE: a replica writing to the run finishes before the delete, and
# one that comes later finds the run gone (and creates it afresh). Then children first.
_DELETE_RUN = (
    "SELECT id FROM runs WHERE id = %(run)s FOR UPDATE",
    "DELETE FROM seen WHERE stream_id IN (SELECT id FROM streams WHERE run_id = %(run)s)",
    "DELETE FROM points WHERE series_id IN (SELECT id FROM series WHERE run_id = %(run)s)",
    "DELETE FROM series WHERE run_id = %(run)s",
    "DELETE FROM steps WHERE run_id = %(run)s",
    "DELETE FROM run_steps WHERE run_id = %(run)s",
    "DELETE FROM clips WHERE run_id = %(run)s",
    "DELETE FROM origins WHERE run_id = %(run)s",
    "DELETE FROM alerts WHERE run_id = %(run)s",
    "DELETE FROM incidents WHERE run_id = %(run)s",
    "DELETE FROM streams WHERE run_id = %(run)s",
    "DELETE FROM runs WHERE id = %(run)s",
)



def _run_row(row: tuple[Any, ...]) -> RunRow:
    (run_id, name, status, created, updated, last_step, world, reason, config, ranks, dropped,
     steps, t0, t1, open_alerts, recent_steps, recent_times, open_incidents, incidents) = row
    return RunRow(run_id, name, status, created, updated, last_step, world, list(ranks),
                  dropped, reason, loads_json(config), steps, t0, t1, dict(open_alerts),
                  steps_per_second(list(zip(recent_steps, recent_times, strict=True))),
                  dict(open_incidents), int(incidents))


def _live_bytes(total: int, heap: int, live: int, width: float, block: int) -> int:
    """A table's total bytes scaled by the share of its heap that its live rows fill."""
    room = (heap // block) * (block - 24)  # page headers take 24 bytes
    if room <= 0 or live <= 0:
        return 0
    row = -(-int(width) // 8) * 8 + 4  # a row is 8-byte aligned, plus its 4-byte line pointer
    return int(total * min(1.0, live * row / room))
