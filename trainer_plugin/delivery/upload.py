"""``trainvitals sync PATH``: upload what spools hold to a server, with a progress bar.

A spool is what a process left behind: records the server never acknowledged, because it was
down, slow, absent, or the run was recorded offline (``Monitor(server=None)``). Each stream is
delivered by the same ``Link`` the training process uses — acknowledged batches, resends after
a reconnect — and its files are deleted once the server has acknowledged all of them. The
server stores each record once, so running sync again, or on a spool that was partly
delivered, is safe.

While it waits it says why, as it happens: each problem once — a server that cannot be
reached, an error frame of the server (``server: unavailable — storage full: … ; retrying in
8 s``) — and again only while the pause before the next try grows (retries back off 1, 2, 4, …
up to 30 s). When the timeout ends a stream's wait, the result says per stream how many records
were acknowledged and how many are left, and why.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TextIO

from trainvitals.protocol import ProtocolError, RunEnd, RunStart, Step
from trainvitals.trainer_plugin.delivery.backoff import backoff_delays
from trainvitals.trainer_plugin.delivery.link import DeliveryStats, Link
from trainvitals.trainer_plugin.delivery.spool import Spool, in_use, spool_files

__all__ = ["RETRY_CAP_S", "RETRY_FIRST_S", "Progress", "StreamResult", "SyncResult", "sync"]

RETRY_FIRST_S, RETRY_CAP_S = 1.0, 30.0  # the pause before the first retry; the longest
GROWN = 1.5  # a problem said before is said again when its pause is this much longer


class Progress(Protocol):
    """A progress display: called with ``(done, total)``; ``note(line)`` prints a line above
    it; ``finish()`` ends it."""

    def __call__(self, done: int, total: int) -> None: ...

    def note(self, line: str) -> None: ...

    def finish(self) -> None: ...


class _Silent:
    """No bar; notes go to ``out``."""

    def __init__(self, out: TextIO) -> None:
        self._out = out

    def __call__(self, done: int, total: int) -> None:
        pass

    def note(self, line: str) -> None:
        self._out.write(line + "\n")
        self._out.flush()

    def finish(self) -> None:
        pass


ProgressFactory = Callable[[str, str], Progress]  # (label, unit) -> a display


@dataclass
class StreamResult:
    """What ``sync`` did with one stream: ``acknowledged`` of ``total`` records, and why the
    rest are ``left`` (``""``: none are)."""

    label: str
    total: int
    acknowledged: int
    why: str = ""

    @property
    def left(self) -> int:
        return self.total - self.acknowledged


@dataclass
class SyncResult:
    """What one ``sync`` did, per stream summed up (each stream in ``per_stream``)."""

    streams: int = 0
    uploaded: int = 0
    left: int = 0
    problems: list[str] = field(default_factory=list)
    per_stream: list[StreamResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Everything found was acknowledged."""
        return self.left == 0 and not self.problems


def sync(path: Path, url: str, token: str | None, *, timeout: float, out: TextIO,
         progress: ProgressFactory | None = None) -> SyncResult:
    """Upload every stream under ``path`` (a spool directory or one segment file);
    ``progress(label, unit)`` makes the display of one stream (the CLI's progress bar; by
    default none, and the notes of why it waits go to ``out``)."""
    if progress is None:
        progress = lambda label, unit: _Silent(out)  # noqa: E731
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
        record = spool.record(first[0]) if first else None
    except (ProtocolError, KeyError) as exc:
        record = None
        result.problems.append(f"{spool.stem}: unreadable spool ({exc})")
    if not isinstance(record, (RunStart, Step, RunEnd)):
        spool.close()
        return
    stream = (record.run, record.rank, record.session)
    total = spool.pending
    label = f"{record.run} (rank {record.rank})"
    bar = progress(label, "records")
    for line in spool.unread:  # said, not fatal: everything whole in the files is uploaded
        bar.note(f"trainvitals sync: {line}")
    bar(0, total)
    stats, changed = DeliveryStats(), threading.Condition()
    notes = _Notes(changed)
    link = Link(url, token, spool, stream, stats, changed, on_problem=notes.problem,
                backoff=lambda: backoff_delays(initial=RETRY_FIRST_S, cap=RETRY_CAP_S))
    thread = threading.Thread(target=link.run, name="trainvitals-sync", daemon=True)
    thread.start()
    end = time.monotonic() + timeout
    with changed:
        while spool.pending and not link.halted and time.monotonic() < end:
            changed.wait(0.2)
            for line in notes.take():  # printed here, by the one thread that draws the bar
                bar.note(line)
            bar(total - spool.pending, total)
    link.stop.set()
    thread.join(5)
    with changed:  # the link thread may still be alive after join(5): take under its lock
        lines = notes.take()
    for line in lines:
        bar.note(line)
    bar(total - spool.pending, total)
    bar.finish()
    left = spool.pending
    result.uploaded += total - left
    result.left += left
    why = ""
    if left:
        cause = link.halted or (f"the server's last error: {stats.server_error}"
                                if stats.server_error else stats.last_error)
        why = (f"the server refuses them: {cause}" if link.halted else
               f"timed out after {timeout:g} s" + (f"; {cause}" if cause else ""))
        result.problems.append(
            f"{label}: {total - left} of {total} record(s) acknowledged, {left} left ({why}); "
            f"they stay in {spool.directory} — run sync again")
    result.per_stream.append(StreamResult(label, total, total - left, why))
    spool.close()


class _Notes:
    """What the link says went wrong (on its thread), kept for the waiting thread to print:
    each problem once, and again only when the pause before the next try has grown."""

    def __init__(self, changed: threading.Condition) -> None:
        self._changed = changed
        self._lines: list[str] = []
        self._said: dict[str, float] = {}  # problem -> the pause said with it

    def problem(self, text: str, retry_in: float | None) -> None:
        before = self._said.get(text)
        pause = -1.0 if retry_in is None else retry_in
        if before is not None and pause < before * GROWN:
            return
        self._said[text] = pause
        if before is None:
            line = text if retry_in is None else f"{text}; retrying in {retry_in:.0f} s"
        else:
            line = f"still the same ({_short(text)}); retrying in {retry_in:.0f} s"
        with self._changed:
            self._lines.append(line)
            self._changed.notify_all()

    def take(self) -> list[str]:
        """The lines not printed yet (call with the condition held)."""
        lines, self._lines = self._lines, []
        return lines


def _short(text: str, most: int = 60) -> str:
    return text if len(text) <= most else text[:most - 1] + "…"
