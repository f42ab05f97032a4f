"""The ids one PostgreSQL write needs — runs, streams, series — found or created, under limits.

Several replicas may create the same run, stream or series at the same moment: each is created
with ``INSERT … ON CONFLICT DO NOTHING`` and then read back. Runs come first, and are locked:
every run the records touch is created if missing (under an advisory lock when ``max_runs`` is
set, so two replicas cannot both take the last place) and then locked ``FOR NO KEY UPDATE`` in
id order. Writes of one run therefore take turns, whichever replica they come through, and
never deadlock; streams and series belong to a run, so their creation takes turns too. A run
that another replica deleted is noticed when it is locked (its row is gone): the cache is
forgotten and the run created afresh.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from trainvitals.protocol import Record, Step
from trainvitals.server.alerts import Alert
from trainvitals.server.alerts.incidents import Incident
from trainvitals.server.store.limits import LimitExceeded, Limits
from trainvitals.server.store.postgres.schema import LOCK_NAMESPACE, RUNS_LOCK
from trainvitals.server.store.postgres.sql import (
    INSERT_SERIES,
    INSERT_STREAMS,
    SELECT_SERIES,
    SELECT_STREAMS,
)

__all__ = ["IdCache", "Ids", "Key", "Stream"]

Stream = tuple[str, int, str]  # (run name, rank, session) as records name a stream
Key = tuple[int, int, str]  # (run id, rank, session) of a stream, (run id, rank, name) of a series


@dataclass
class IdCache:
    """Ids this store has looked up; any of them may be forgotten at any time."""

    runs: dict[str, int] = field(default_factory=dict)
    streams: dict[Key, int] = field(default_factory=dict)
    series: dict[Key, int] = field(default_factory=dict)
    # stream id -> a seq up to which every seq is stored (a lower bound of the true mark)
    high_water: dict[int, int] = field(default_factory=dict)

    def forget(self) -> None:
        """Drop everything (after a rollback, or when another replica deleted a run)."""
        for ids in (self.runs, self.streams, self.series, self.high_water):
            ids.clear()


class Ids:
    """Finds or creates ids inside the caller's transaction, keeping them in ``cache``."""

    def __init__(self, conn: Any, cache: IdCache, limits: Limits) -> None:
        self.conn, self.cache, self.limits = conn, cache, limits

    def lock_runs(self, records: Iterable[Record | Alert | Incident]) -> None:
        """Create the runs of ``records`` where missing and lock them all, in id order."""
        first_time: dict[str, float] = {}
        for r in records:
            first_time.setdefault(r.run, getattr(r, "time", 0.0))
        for _ in range(3):
            wanted = {self._run_id(name, first_time[name]) for name in sorted(first_time)}
            locked = self.conn.execute(
                "SELECT id FROM runs WHERE id = ANY(%s) ORDER BY id FOR NO KEY UPDATE",
                (sorted(wanted),)).fetchall()
            if len(locked) == len(wanted):
                return
            self.cache.forget()  # another replica deleted a run we had cached: look up again
        raise RuntimeError("runs were deleted while this write was looking them up")

    def _run_id(self, name: str, time: float) -> int:
        if name not in self.cache.runs:
            found = self._select_run(name)
            limit = self.limits.max_runs
            if found is None and limit is not None:
                self.conn.execute("SELECT pg_advisory_xact_lock(%s, %s)",
                                  (LOCK_NAMESPACE, RUNS_LOCK))
                found = self._select_run(name)  # created while we waited?
                if found is None and self._count("SELECT count(*) FROM runs") >= limit:
                    raise LimitExceeded.runs(limit, name)
            if found is None:
                self.conn.execute("INSERT INTO runs(name, created, updated) VALUES (%s, %s, %s) "
                                  "ON CONFLICT (name) DO NOTHING", (name, time, time))
                found = self._select_run(name)
            assert found is not None
            self.cache.runs[name] = found
        return self.cache.runs[name]

    def _select_run(self, name: str) -> int | None:
        row = self.conn.execute("SELECT id FROM runs WHERE name = %s", (name,)).fetchone()
        return None if row is None else int(row[0])

    def _count(self, sql: str, *params: Any) -> int:
        return int(self.conn.execute(sql, params).fetchone()[0])

    def streams(self, records: Sequence[Record]) -> dict[Stream, int]:
        """The stream id of each stream of ``records`` (whose runs are locked), created where
        missing."""
        keys = {(r.run, r.rank, r.session): (self.cache.runs[r.run], r.rank, r.session)
                for r in records}
        self._ensure(INSERT_STREAMS, SELECT_STREAMS, self.cache.streams, list(keys.values()))
        return {stream: self.cache.streams[key] for stream, key in keys.items()}

    def _ensure(self, insert: str, select: str, cache: dict[Key, int], keys: list[Key]) -> None:
        """Create the rows of ``keys`` that are missing and cache the ids of all of them."""
        missing = sorted({k for k in keys if k not in cache})
        if not missing:
            return
        arrays = _key_columns(missing)
        self.conn.execute(insert, arrays)
        for row_id, run_id, rank, text in self.conn.execute(select, arrays).fetchall():
            cache[(run_id, rank, text)] = row_id

    def series(self, steps: list[Step], values: list[dict[str, float]]) -> dict[Key, int]:
        """The series ids of these steps' values, created where missing (within the limit)."""
        pairs = zip(steps, values, strict=True)
        keys = list(dict.fromkeys((self.cache.runs[s.run], s.rank, name)
                                  for s, named in pairs for name in named))
        limit = self.limits.max_series_per_run
        unknown = [k for k in keys if k not in self.cache.series]
        if unknown and limit is not None:
            self._check_series_limit(unknown, limit, {s.run: self.cache.runs[s.run] for s in steps})
        self._ensure(INSERT_SERIES, SELECT_SERIES, self.cache.series, unknown)
        return self.cache.series

    def _check_series_limit(self, unknown: list[Key], limit: int, runs: dict[str, int]) -> None:
        rows = self.conn.execute(SELECT_SERIES, _key_columns(unknown)).fetchall()
        existing = {(run_id, rank, name) for _, run_id, rank, name in rows}
        counts: dict[int, int] = {}
        names = {run_id: name for name, run_id in runs.items()}
        for run_id, _, name in (k for k in unknown if k not in existing):
            if run_id not in counts:
                counts[run_id] = self._count("SELECT count(*) FROM series WHERE run_id = %s",
                                             run_id)
            if counts[run_id] >= limit:
                raise LimitExceeded.series(limit, names[run_id], name)
            counts[run_id] += 1


def _key_columns(keys: list[Key]) -> tuple[list[int], list[int], list[str]]:
    """Stream or series keys as the three arrays the statements unnest."""
    return [k[0] for k in keys], [k[1] for k in keys], [k[2] for k in keys]
