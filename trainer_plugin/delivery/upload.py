"""``trainvitals sync PATH``: upload what spools hold to a server, with a progress bar.

A spool is what a process left behind: records the server never acknowledged, because it was
down, slow, absent, or the run was recorded offline (``Monitor(server=None)``). Each stream is
delivered by the same ``Link`` the training process uses — acknowledged batches, resends after
a reconnect — and its files are deleted once the server has acknowledged all of them. The
server stores each record once, so running sync again, or on a spool that was partly
delivered, is safe.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TextIO

from trainvitals.protocol import ProtocolError, RunEnd, RunStart, Step, decode
from trainvitals.trainer_plugin.delivery.link import DeliveryStats, Link
from trainvitals.trainer_plugin.delivery.spool import Spool, in_use, spool_files

__all__ = ["Progress", "SyncResult", "sync"]


class Progress(Protocol):
    """A progress display: called with ``(done, total)``; ``finish()`` ends it."""

    def __call__(self, done: int, total: int) -> None: ...

    def finish(self) -> None: ...


class _Silent:
    def __call__(self, done: int, total: int) -> None:
        pass

    def finish(self) -> None:
        pass


ProgressFactory = Callable[[str, str], Progress]  # (label, unit) -> a display


@dataclass
class SyncResult:
    """What one ``sync`` did, per stream summed up."""

    streams: int = 0
    uploaded: int = 0
    left: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Everything found was acknowledged."""
        return self.left == 0 and not self.problems


def sync(path: Path, url: str, token: str | None, *, timeout: float, out: TextIO,
         progress: ProgressFactory = lambda label, unit: _Silent()) -> SyncResult:
    """Upload every stream under ``path`` (a spool directory or one segment file);
    ``progress(label, unit)`` makes the display of one stream (the CLI's progress bar)."""
    result = SyncResult()
    groups = spool_files(path)
    if not groups:
        out.write(f"trainvitals sync: no spool files in {path}\n")
    for stem, files in groups.items():
        if in_use(files[0].parent, stem):
            result.problems.append(f"{stem}: a running process is still writing it; skipped")
            continue
        result.streams += 1
        _one_stream(Spool.reopen(files), url, token, timeout, progress, result)
    for problem in result.problems:
        out.write(f"trainvitals sync: {problem}\n")
    return result


def _one_stream(spool: Spool, url: str, token: str | None, timeout: float,
                progress: ProgressFactory, result: SyncResult) -> None:
    first = spool.read(spool.acked + 1, 1, 1)
    try:
        record = decode(first[0]) if first else None
    except ProtocolError as exc:
        record = None
        result.problems.append(f"{spool.stem}: unreadable spool ({exc})")
    if not isinstance(record, (RunStart, Step, RunEnd)):
        spool.close()
        return
    stream = (record.run, record.rank, record.session)
    total = spool.pending
    bar = progress(f"{record.run} (rank {record.rank})", "records")
    bar(0, total)
    stats, changed = DeliveryStats(), threading.Condition()
    link = Link(url, token, spool, stream, stats, changed)
    thread = threading.Thread(target=link.run, name="trainvitals-sync", daemon=True)
    thread.start()
    end = time.monotonic() + timeout
    with changed:
        while spool.pending and not link.halted and time.monotonic() < end:
            changed.wait(0.2)
            bar(total - spool.pending, total)
    link.stop.set()
    thread.join(5)
    bar(total - spool.pending, total)
    bar.finish()
    result.uploaded += total - spool.pending
    result.left += spool.pending
    if spool.pending:
        result.problems.append(
            f"{record.run} (rank {record.rank}): {spool.pending} record(s) not acknowledged "
            f"({link.halted or stats.last_error or 'timed out'}); they stay in "
            f"{spool.directory} — run sync again")
    spool.close()
