"""Upgrading a SQLite file of an older schema version in place, when the store opens it.

Each step takes a file from one version to the next in one transaction (a crash leaves the old
version, and the next start tries again). A version with no way up (an unknown or newer one) is
refused before anything is touched.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

from trainvitals.server.store.sqlite import run_steps
from trainvitals.server.store.sqlite.blocks import rebuild
from trainvitals.server.store.sqlite.schema import (
    INCIDENTS,
    POINT_BLOCKS,
    RUN_STEPS,
    SCHEMA_VERSION,
)

__all__ = ["migrate"]

log = logging.getLogger("trainvitals.server")
LOG_EVERY_S = 5.0  # progress lines while a big file is upgraded


def migrate(conn: sqlite3.Connection, path: Path, found: int) -> None:
    """Upgrade the file at ``path`` (open as ``conn``) from version ``found`` to this server's.

    Raises ``RuntimeError`` (and changes nothing) when there is no way from ``found``.
    """
    if found not in _STEPS:
        raise RuntimeError(f"{path} has schema version {found}; this server needs "
                           f"{SCHEMA_VERSION}. Use a new data directory.")
    while found < SCHEMA_VERSION:
        log.info("%s: upgrading the schema from version %d to %d", path, found, found + 1)
        conn.execute("BEGIN IMMEDIATE")
        try:
            _STEPS[found](conn, path)
            conn.execute("UPDATE meta SET value=? WHERE key='schema_version'", (str(found + 1),))
            conn.commit()
        except BaseException:
            conn.rollback()
            raise
        found += 1


def _add_point_blocks(conn: sqlite3.Connection, path: Path) -> None:
    """1 → 2: block summaries of every series, built from its points in one pass."""
    conn.execute(POINT_BLOCKS)  # one statement: executescript would commit the transaction
    started = time.monotonic()
    total = rebuild(conn, progress=_progress(path, started))
    log.info("%s: summarised %d points into blocks in %.1f s", path, total,
             time.monotonic() - started)


def _add_incidents(conn: sqlite3.Connection, path: Path) -> None:
    """2 → 3: the incidents table (empty: incidents are made from new steps)."""
    conn.execute(INCIDENTS)


def _add_run_steps(conn: sqlite3.Connection, path: Path) -> None:
    """3 → 4: each run's step count and first/last time, counted once from ``steps``."""
    conn.execute(RUN_STEPS)
    started = time.monotonic()
    run_steps.rebuild(conn)
    (steps, runs) = conn.execute("SELECT coalesce(sum(steps), 0), count(DISTINCT run_id) "
                                 "FROM run_steps").fetchone()
    log.info("%s: counted %d steps of %d runs in %.1f s", path, steps, runs,
             time.monotonic() - started)


def _progress(path: Path, started: float) -> Callable[[int], None]:
    last = [started]

    def report(done: int) -> None:
        now = time.monotonic()
        if now - last[0] >= LOG_EVERY_S:
            last[0] = now
            log.info("%s: %d points summarised into blocks so far (%.0f s)", path, done,
                     now - started)
    return report


_STEPS: dict[int, Callable[[sqlite3.Connection, Path], None]] = {
    1: _add_point_blocks, 2: _add_incidents, 3: _add_run_steps}
