"""The spool: one stream's records, numbered and kept until the server acknowledges them.

Every record goes through the spool, whether the server is up, slow, down or absent: the spool
gives it its ``seq`` (so a record that is refused never takes a number, and a stream has no
gaps), validates it as the server's decoder would (``protocol.precheck``: the decoder itself only
for what it has not seen before), and appends it as one JSON line to a segment file
``<run>.r<rank>.<session>.<first seq>.jsonl``. The sender reads from the spool and resends from
the last acknowledged record after a reconnect; segments are deleted once acknowledged — the
one being written when it is full or the spool closes, so that quick acks do not make a file
per record (after a crash it may hold records the server has: sync resends them, the server
stores each once). What is left when the process ends is what ``trainvitals sync`` uploads.
The collector appends what it has in one go (``append_many``: one write and flush).

Bounded: a record that would push the files past ``max_bytes`` is refused (run start and end
records, which are small, always fit). With ``directory=None`` the segments live in memory.
``backlog()`` says what the spool holds, for the batch frames the sender sends
(``protocol.Backlog``), without touching a record: its counts, its size, and the age of the
oldest unacknowledged record, from the monotonic time at which each ``append_many`` batch was
kept (at most one mark a second and ``MAX_MARKS`` in all: an age is never understated, and
overstated by at most the gap between two marks).
Thread-safe: the collector thread appends while the sender thread reads and acknowledges.
While a process writes a stream it holds a lock on ``<stem>.lock`` (released by the OS if the
process dies), so that ``trainvitals sync`` leaves a live spool alone.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import BinaryIO, TextIO

from trainvitals.protocol import Record, encode
from trainvitals.protocol.messages import Backlog
from trainvitals.protocol.precheck import Precheck
from trainvitals.protocol.transport import BATCH_OVERHEAD_BYTES

__all__ = ["Spool", "SpoolRefused", "in_use", "spool_files", "stream_stem"]

try:
    import fcntl
except ImportError:  # not POSIX: no lock, sync must not run beside a live process
    fcntl = None  # type: ignore[assignment]

SUFFIX = ".jsonl"
MARK_EVERY = 1.0  # seconds between two marks of when records were appended
MAX_MARKS = 4096  # beyond it every other mark is forgotten (the oldest is always kept)
_NAME = re.compile(r"^(?P<stem>.+)\.(?P<first>\d{12})\.jsonl$")


class SpoolRefused(Exception):
    """A record the spool did not take (it has no ``seq``); ``str()`` says why."""


@dataclasses.dataclass
class _Segment:
    """Consecutive records ``first``, ``first + 1``, … in one file (or list, in memory)."""

    first: int
    count: int = 0
    size: int = 0
    path: Path | None = None
    lines: list[str] | None = None

    @property
    def last(self) -> int:
        return self.first + self.count - 1


class Spool:
    """One stream's unacknowledged records; see the module docstring."""

    def __init__(self, directory: Path | None, stem: str, *, max_bytes: int,
                 max_record_bytes: int, segment_bytes: int = 4 << 20) -> None:
        self.directory, self.stem = directory, stem
        self.max_bytes, self.max_record_bytes = max_bytes, max_record_bytes
        self._segment_bytes = max(1, min(segment_bytes, max_bytes // 4))
        self._segments: list[_Segment] = []
        self._writing: _Segment | None = None
        self._handle: TextIO | None = None  # the open file of ``_writing`` (file mode)
        self._reader: BinaryIO | None = None  # the file read last (file mode)
        # (seq, file, byte offset) where the last read stopped
        self._cursor: tuple[int, Path | None, int] = (-1, None, 0)
        self._lock = threading.Lock()
        self._precheck = Precheck()  # the decoder's verdict, without decoding every step
        self.next_seq = 0
        self.acked = -1
        self.closed = False
        self.limited = True  # False for a spool reopened by sync: it refuses nothing
        # (first seq, monotonic time) of the batches kept, the oldest unacknowledged first
        self._marks: deque[tuple[int, float]] = deque()
        self._lock_handle: TextIO | None = None
        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True)
            self._lock_handle = _hold_lock(directory / f"{stem}.lock")

    @classmethod
    def reopen(cls, files: list[Path]) -> Spool:
        """A spool over the segment files one process left behind (``trainvitals sync``).

        Everything before the first file was acknowledged: that is why it was deleted.
        """
        names = [(_NAME.match(f.name), f) for f in sorted(files)]
        parts = [(m.group("stem"), int(m.group("first")), f) for m, f in names if m is not None]
        spool = cls(files[0].parent, parts[0][0], max_bytes=1 << 62, max_record_bytes=1 << 62)
        for _, first, path in parts:
            data = path.read_bytes()
            spool._segments.append(_Segment(first, data.count(b"\n"), len(data), path))
        spool.acked = spool._segments[0].first - 1
        spool.next_seq = spool._segments[-1].last + 1
        spool.limited = False
        # Each file was last written when its newest record was appended: its records are at
        # least that old (the wall clock of the files, carried onto this process's clock).
        now, wall = time.monotonic(), time.time()
        for seg in spool._segments:
            assert seg.path is not None
            age = max(0.0, wall - seg.path.stat().st_mtime)
            spool._marks.append((seg.first, now - age))
        return spool

    # ------------------------------------------------------------ collector side

    def append(self, record: Record, *, essential: bool = False) -> Record:
        """Number, validate and keep ``record``; the numbered record, or ``SpoolRefused``."""
        (kept,) = self.append_many([(record, essential)])
        if isinstance(kept, SpoolRefused):
            raise kept
        return kept

    def append_many(self, items: Sequence[tuple[Record, bool]]) -> list[Record | SpoolRefused]:
        """``append`` for several ``(record, essential)`` pairs at once, with one write to the
        file: for each, the numbered record or why it was refused, in order."""
        with self._lock:
            first = self.next_seq
            kept = [self._append(record, essential) for record, essential in items]
            if self.next_seq > first:
                self._mark(first)
            if self._handle is not None:
                self._handle.flush()  # survives a killed process (not a power loss: no fsync)
            return kept

    def _append(self, record: Record, essential: bool) -> Record | SpoolRefused:
        if self.closed:
            return SpoolRefused("the monitor was closed")
        numbered = dataclasses.replace(record, seq=self.next_seq)
        line = encode(numbered)
        size = len(line.encode("utf-8", "surrogatepass")) + 1
        if size + BATCH_OVERHEAD_BYTES > self.max_record_bytes:
            return SpoolRefused(f"record of {size} bytes is larger than a frame may be "
                                f"({self.max_record_bytes} bytes)")
        problem = self._precheck.problem(numbered, line)
        if problem:  # the server would refuse it: keep the stream clean
            return SpoolRefused(f"record the server would refuse: {problem}")
        if not essential and self.size + size > self.max_bytes:
            return SpoolRefused(f"spool full ({self.max_bytes} bytes)")
        self._write(line, size)
        self.next_seq += 1
        return numbered

    def _mark(self, first: int) -> None:
        """Records from ``first`` on were kept now (under the lock)."""
        now = time.monotonic()
        if first <= self.acked + 1:
            self._marks.clear()  # nothing older is unacknowledged: these are the oldest
        if self._marks and now - self._marks[-1][1] < MARK_EVERY:
            return  # the previous mark's time stands for these too (an older one: never less)
        self._marks.append((first, now))
        if len(self._marks) > MAX_MARKS:
            thinned = list(self._marks)
            self._marks = deque(thinned[:1] + thinned[2::2])

    def _forget_marks(self) -> None:
        """Forget marks before the one of the oldest unacknowledged record (under the lock)."""
        oldest = self.acked + 1
        if oldest >= self.next_seq:
            self._marks.clear()  # nothing unacknowledged
            return
        while len(self._marks) > 1 and self._marks[1][0] <= oldest:
            self._marks.popleft()

    def _write(self, line: str, size: int) -> None:
        seg = self._writing
        if seg is None or seg.size >= self._segment_bytes:
            if seg is not None and seg.last <= self.acked:  # kept only to be written on
                self._segments.remove(seg)
                self._drop(seg)
            self._close_handle()
            seg = _Segment(self.next_seq)
            if self.directory is None:
                seg.lines = []
            else:
                seg.path = self.directory / f"{self.stem}.{seg.first:012d}{SUFFIX}"
                self._handle = seg.path.open("a", encoding="utf-8", newline="\n")
            self._segments.append(seg)
            self._writing = seg
        if seg.lines is not None:
            seg.lines.append(line)
        elif self._handle is not None:
            self._handle.write(line + "\n")  # flushed by append_many, once per batch
        seg.count += 1
        seg.size += size

    # ------------------------------------------------------------ sender side

    def read(self, first: int, max_records: int, max_bytes: int) -> list[str]:
        """Records from ``first`` on (or the oldest kept), at most ``max_records`` and, except
        for the first one, ``max_bytes`` in all."""
        out: list[str] = []
        total = 0
        with self._lock:
            for seg in self._segments:
                if seg.last < first:
                    continue
                for line in self._lines(seg, max(first, seg.first)):
                    total += len(line.encode("utf-8", "surrogatepass")) + 1
                    if out and (total > max_bytes or len(out) >= max_records):
                        return out
                    out.append(line)
        return out

    def _lines(self, seg: _Segment, start: int) -> Iterator[str]:
        """The lines of ``seg`` from seq ``start`` on. Reading on where the previous read
        stopped seeks there instead of skipping lines (the usual case)."""
        if seg.lines is not None:
            yield from seg.lines[start - seg.first:]
            return
        assert seg.path is not None
        f = self._reader_of(seg.path)
        if self._cursor[:2] == (start, seg.path):
            f.seek(self._cursor[2])
        else:
            f.seek(0)
            for _ in range(start - seg.first):
                f.readline()
        seq = start
        while True:
            self._cursor = (seq, seg.path, f.tell())
            raw = f.readline()
            if not raw.endswith(b"\n"):  # end of file (or a line cut by a killed writer)
                return
            yield raw[:-1].decode("utf-8", "surrogatepass")
            seq += 1

    def _reader_of(self, path: Path) -> BinaryIO:
        """An open handle on ``path`` for reading, kept from one read to the next (the sender
        reads the file being written after every few records)."""
        if self._reader is None or self._reader.name != str(path):
            self._close_reader()
            self._reader = path.open("rb")
        return self._reader

    def ack(self, seq: int) -> None:
        """The server has every record up to ``seq``: forget those, delete their segments."""
        with self._lock:
            if seq <= self.acked:
                return
            self.acked = min(seq, self.next_seq - 1)
            self._forget_marks()
            while self._segments and self._segments[0].last <= self.acked:
                if self._segments[0] is self._writing and self._writing.path is not None:
                    # The file being written stays until it is full (or the spool closes):
                    # deleting it here would mean a new file per record when acks are quick.
                    break
                self._drop(self._segments.pop(0))

    def _drop(self, seg: _Segment) -> None:
        if seg is self._writing:
            self._close_handle()
            self._writing = None
        if seg.path is not None:
            if self._reader is not None and self._reader.name == str(seg.path):
                self._close_reader()
            seg.path.unlink(missing_ok=True)
        if self._cursor[1] == seg.path:
            self._cursor = (-1, None, 0)

    # ------------------------------------------------------------ both

    @property
    def pending(self) -> int:
        """Records kept and not yet acknowledged."""
        return self.next_seq - 1 - self.acked

    @property
    def size(self) -> int:
        """Bytes the kept segments take."""
        return sum(s.size for s in self._segments)

    def backlog(self) -> Backlog:
        """What the spool holds now, for the batch frame the sender is about to send: the
        records not yet acknowledged, the bytes the kept files take, the limit (0: none), the
        age of the oldest unacknowledged record, the highest seq. No record is read."""
        with self._lock:
            pending = self.pending
            age = time.monotonic() - self._marks[0][1] if pending and self._marks else 0.0
            return Backlog(records=pending, bytes=sum(s.size for s in self._segments),
                           max_bytes=self.max_bytes if self.limited else 0,
                           oldest_age=round(max(0.0, age), 3), last_seq=self.next_seq - 1)

    def files(self) -> list[Path]:
        """The segment files on disk (none in memory mode)."""
        with self._lock:
            return [s.path for s in self._segments if s.path is not None]

    def close(self) -> list[Path]:
        """Stop writing; delete the files if everything was acknowledged. The files kept."""
        with self._lock:
            self.closed = True
            self._close_handle()
            self._close_reader()
            self._writing = None
            if self.pending == 0:
                for seg in self._segments:
                    self._drop(seg)
                self._segments.clear()
            lock, self._lock_handle = self._lock_handle, None
            if lock is not None:
                with contextlib.suppress(OSError):
                    os.unlink(lock.name)
                lock.close()  # releases the lock
            return [s.path for s in self._segments if s.path is not None]

    def _close_handle(self) -> None:
        handle, self._handle = self._handle, None
        if handle is not None:
            with contextlib.suppress(OSError):
                handle.close()

    def _close_reader(self) -> None:
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.close()


def spool_files(path: Path) -> dict[str, list[Path]]:
    """Segment files under ``path`` (a file or a directory), grouped by stream, in order."""
    candidates = [path] if path.is_file() else sorted(path.glob(f"*{SUFFIX}"))
    streams: dict[str, list[Path]] = {}
    for file in candidates:
        match = _NAME.match(file.name)
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


def _hold_lock(path: Path) -> TextIO | None:
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
