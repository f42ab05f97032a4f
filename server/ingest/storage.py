"""Free space on the data directory's disk, the floor under it, and what a failed commit means.

SQLite needs room even when it stores nothing new: a checkpoint copies the write-ahead log
into the database file, retention's deletes go through the log, and reads must still be
answered. So the server refuses new records *before* the filesystem is full: below the floor
(``min_free_bytes``, or ``min_free_percent`` of the filesystem, whichever is larger) every
frame is answered ``unavailable`` — how much is free, and what to do — and nothing is
written. Hysteresis: refusing starts below the floor and stops once free space is back above
the floor plus a margin (a tenth of the floor, at least 1 MiB), so a disk hovering at the floor
does not flap between storing and refusing; "nearly full" (below twice the floor) likewise.

With PostgreSQL the database's disk is not ours to measure: there is no floor, and a failed
commit that says the disk is full (SQLSTATE 53100) is all the server knows.
"""

from __future__ import annotations

import errno
import shutil
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

__all__ = ["WHAT_TO_DO", "BelowFloor", "FreeSpace", "Space", "is_disk_full", "mib"]

MiB = 1 << 20
Level = Literal["ok", "low", "refusing", "unknown"]
DiskUsage = Callable[[Path], Any]  # shutil.disk_usage: (total, used, free)
WHAT_TO_DO = ("free space: delete old runs (retain_days / retain_bytes), or move --data-dir "
              "to a larger disk")


def mib(n: int) -> str:
    """Bytes for people: ``3.1 MiB``."""
    return f"{n / MiB:,.1f} MiB" if n < 10 * 1024 * MiB else f"{n / (1024 * MiB):,.1f} GiB"


def is_disk_full(exc: BaseException) -> bool:
    """Whether a failed commit failed because the disk (or the database's quota) is full."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        return code == sqlite3.SQLITE_FULL or "database or disk is full" in str(exc)
    if getattr(exc, "sqlstate", None) == "53100":  # PostgreSQL's disk_full
        return True
    return "No space left on device" in str(exc)


class BelowFloor(Exception):
    """A frame refused before its commit: free space is below the floor (``str()``: why and
    what to do, for the sender)."""


@dataclass(frozen=True, slots=True)
class Space:
    """One measurement of the data directory's filesystem."""

    path: str
    free: int  # bytes available to the server (-1: could not measure, see ``error``)
    total: int
    floor: int
    level: Level
    error: str = ""

    def describe(self) -> str:
        """``3.1 MiB free of 24.0 MiB on /data (the server keeps 4.0 MiB free)``."""
        if self.level == "unknown":
            return f"cannot measure free space on {self.path}: {self.error}"
        return (f"{mib(self.free)} free of {mib(self.total)} on {self.path} (the server keeps "
                f"{mib(self.floor)} free: min_free_bytes / min_free_percent)")


class FreeSpace:
    """The floor's state machine over measurements of ``path``; thread-safe (the writer's
    thread checks it before each commit, the readiness task between commits)."""

    def __init__(self, path: Path, *, min_free_bytes: int, min_free_percent: float = 0.0,
                 usage: DiskUsage = shutil.disk_usage) -> None:
        self.path, self._bytes, self._percent = path, min_free_bytes, min_free_percent
        self._usage = usage
        self._lock = threading.Lock()
        self._level: Level = "ok"
        self.last: Space | None = None

    def floor(self, total: int) -> int:
        """The bytes kept free on a filesystem of ``total`` bytes."""
        return max(self._bytes, int(total * self._percent / 100))

    def measure(self) -> Space:
        """Measure now and move the state machine; the measurement."""
        try:
            total, _, free = self._usage(_existing(self.path))
        except OSError as exc:  # the directory is gone or unmounted: say so, refuse nothing
            space = Space(str(self.path), -1, 0, self._bytes, "unknown",
                          f"{type(exc).__name__}: {exc}")
        else:
            floor = self.floor(total)
            with self._lock:
                self._level = _next_level(self._level, free, floor)
                space = Space(str(self.path), free, total, floor, self._level)
                self.last = space  # under the lock: two threads measure (writer, readiness)
                return space
        with self._lock:
            self.last = space
        return space

    def check(self) -> None:
        """Measure; raise ``BelowFloor`` (saying why and what to do) while refusing."""
        space = self.measure()
        if space.level == "refusing":
            raise BelowFloor(
                f"storage full: {mib(space.free)} free on {space.path}, below the "
                f"{mib(space.floor)} the server keeps free (min_free_bytes); nothing of this "
                f"frame was stored; the sender keeps it and sends it again — {WHAT_TO_DO}")


def _existing(path: Path) -> Path:
    """``path``, or its nearest existing parent: the data directory is made on first use, on
    the disk of the directory that holds it."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _margin(floor: int) -> int:
    return max(floor // 10, MiB)


def _next_level(level: Level, free: int, floor: int) -> Level:
    """Below the floor: refusing; below twice the floor: low; each left only once free space
    is a margin above where it began."""
    if free < floor or (level == "refusing" and free < floor + _margin(floor)):
        return "refusing"
    if free < 2 * floor or (level in ("refusing", "low") and free < 2 * floor + _margin(floor)):
        return "low"
    return "ok"
