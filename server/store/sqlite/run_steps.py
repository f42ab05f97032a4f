"""``run_steps`` in SQLite: merged with every write of steps, recounted from ``steps`` at need.

See ``trainvitals.server.store.run_steps`` for what the rows hold and why they stay exact.
Anything that writes ``steps`` without the store (an import, a benchmark's generator, the
upgrade of an older file) must call ``rebuild`` for the runs it wrote.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable

from trainvitals.server.store.run_steps import PendingSteps, merge

__all__ = ["flush", "rebuild"]

# Steps only added (the common case): added to the stored row, or its first row. In DO UPDATE,
# a bare column name is the stored row's value.
_ADD = ("INSERT INTO run_steps VALUES (?,?,?,?,?) ON CONFLICT (run_id, rank) DO UPDATE SET "
        "steps = steps + excluded.steps, first_time = min(first_time, excluded.first_time), "
        "last_time = max(last_time, excluded.last_time)")
_SELECT = "SELECT steps, first_time, last_time FROM run_steps WHERE run_id=? AND rank=?"
_REPLACE = "INSERT OR REPLACE INTO run_steps VALUES (?,?,?,?,?)"
_COUNT = ("INSERT INTO run_steps SELECT run_id, rank, count(*), min(time), max(time) "
          "FROM steps {where} GROUP BY run_id, rank")


def flush(conn: sqlite3.Connection, pending: PendingSteps) -> None:
    """Merge the write's changes to ``steps`` into ``run_steps`` (inside its transaction)."""
    added = []
    for (run_id, rank), p in pending.items():
        if not p.replaced:
            added.append((run_id, rank, p.added, p.lo, p.hi))
            continue
        merged = merge(conn.execute(_SELECT, (run_id, rank)).fetchone(), p)
        if merged is None:  # a replaced time was the first or last: count the rank again
            conn.execute("DELETE FROM run_steps WHERE run_id=? AND rank=?", (run_id, rank))
            conn.execute(_COUNT.format(where="WHERE run_id=? AND rank=?"), (run_id, rank))
        else:
            conn.execute(_REPLACE, (run_id, rank, *merged))
    conn.executemany(_ADD, added)
    pending.clear()


def rebuild(conn: sqlite3.Connection, run_ids: Iterable[int] | None = None) -> None:
    """Count the given runs' rows (every run's if None) afresh from ``steps``, in the caller's
    transaction: one pass over those runs' steps."""
    if run_ids is None:
        conn.execute("DELETE FROM run_steps")
        conn.execute(_COUNT.format(where=""))
        return
    for run_id in run_ids:
        conn.execute("DELETE FROM run_steps WHERE run_id=?", (run_id,))
        conn.execute(_COUNT.format(where="WHERE run_id=?"), (run_id,))
