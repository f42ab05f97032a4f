"""A spool directory: its segment files' names, which streams it holds, and the lock a live
process holds on each stream it writes (so that ``trainvitals sync`` leaves that one alone).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TextIO

from trainvitals.trainer_plugin.delivery.segments import BINARY_SUFFIX, LEGACY_SUFFIX

__all__ = ["NAME", "hold_lock", "in_use", "spool_files", "stream_stem"]

try:
    import fcntl
except ImportError:  # not POSIX: no lock, sync must not run beside a live process
    fcntl = None  # type: ignore[assignment]

NAME = re.compile(r"^(?P<stem>.+)\.(?P<first>\d{12})(?P<suffix>\.tvs|\.jsonl)$")


def spool_files(path: Path) -> dict[str, list[Path]]:
    """Segment files under ``path`` (a file or a directory), grouped by stream, in order."""
    candidates = [path] if path.is_file() else sorted(
        [*path.glob(f"*{BINARY_SUFFIX}"), *path.glob(f"*{LEGACY_SUFFIX}")],
        key=lambda p: p.name)
    streams: dict[str, list[Path]] = {}
    for file in candidates:
        match = NAME.match(file.name)
        if match is not None:
            streams.setdefault(match.group("stem"), []).append(file)
    return streams


def in_use(directory: Path, stem: str) -> bool:
    """Whether a live process holds the stream's lock (it is writing that spool now)."""
    path = directory / f"{stem}.lock"
    if fcntl is None or not path.exists():
        return False
    with path.open("a") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return True
        fcntl.flock(f.fileno(), fcntl.LOCK_UN)
    return False


def hold_lock(path: Path) -> TextIO | None:
    if fcntl is None:
        return None
    handle = path.open("a")
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # another process writes this very stream: impossible with fresh sessions
        handle.close()
        return None
    return handle


def stream_stem(run: str, rank: int, session: str) -> str:
    """The common start of a stream's segment file names. The run's name appears only as a
    file-name-safe hint: the records themselves carry the real one."""
    slug = re.sub(r"[^A-Za-z0-9_-]+", "-", run)[:40].strip("-") or "run"
    return f"{slug}.r{rank}.{session}"
