"""The spool: one stream's records, numbered and kept until the server acknowledges them.

Every record goes through the spool, whether the server is up, slow, down or absent: the spool
gives it its ``seq`` (so a record that is refused never takes a number, and a stream has no
gaps), validates it as the server's decoder would, and appends it to a segment file
``<run>.r<rank>.<session>.<first seq>.tvs`` (``segments``). A step is kept as a row of float64
(``protocol.rows``: the bytes a version-2 frame carries, validated by decoding the first row of
each layout and every row with a clip event or origin, and field by field otherwise); what
cannot be a row (run start and end records, odd steps) is kept as version-1 JSON text,
validated by ``protocol.precheck``. The sender reads from the spool and resends from
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
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import BinaryIO, TextIO

from trainvitals.protocol import Record, Step, decode, encode
from trainvitals.protocol.messages import Backlog
from trainvitals.protocol.precheck import Precheck
from trainvitals.protocol.rows import Layout, Packer, Row, assemble, problem, row_step
from trainvitals.protocol.transport import BATCH_OVERHEAD_BYTES
from trainvitals.trainer_plugin.delivery.segments import (
    BINARY_SUFFIX,
    ENTRY_HEAD,
    LAYOUT,
    LEGACY_SUFFIX,
    MAGIC,
    ROW,
    STREAM,
    TEXT,
    Entry,
    ScannedFile,
    entry_bytes,
    entry_size,
    parse_row,
    read_entries,
    row_payload,
    stream_payload,
)
from trainvitals.trainer_plugin.delivery.spool_dir import (
    NAME,
    hold_lock,
    in_use,
    spool_files,
    stream_stem,
)

__all__ = ["Entry", "Spool", "SpoolRefused", "in_use", "read_records", "spool_files",
           "stream_stem"]

MARK_EVERY = 1.0  # seconds between two marks of when records were appended
MAX_MARKS = 4096  # beyond it every other mark is forgotten (the oldest is always kept)
Stream = tuple[str, str, int]  # (run, session, rank), as rows and binary frames name it


class SpoolRefused(Exception):
    """A record the spool did not take (it has no ``seq``); ``str()`` says why."""


@dataclasses.dataclass
class _Segment:
    """Consecutive records ``first``, ``first + 1``, … in one file (or list, in memory)."""

    first: int
    count: int = 0
    size: int = 0
    path: Path | None = None
    entries: list[Entry] | None = None  # in memory mode
    legacy: bool = False  # a .jsonl file of an earlier version (read only)
    layouts: set[int] = dataclasses.field(default_factory=set)  # written into the file

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
        self._handle: BinaryIO | None = None  # the open file of ``_writing`` (file mode)
        self._reader: BinaryIO | None = None  # the file read last (file mode)
        # (seq, file, byte offset) where the last read stopped
        self._cursor: tuple[int, Path | None, int] = (-1, None, 0)
        self._lock = threading.Lock()
        self._precheck = Precheck()  # the decoder's verdict, without decoding every step
        self.stream: Stream | None = None  # known from the first record
        self._packer: Packer | None = None
        self._layouts: dict[int, Layout] = {}  # every layout of the rows kept, by id
        self._row_frames: dict[int, int | None] = {}  # layout id -> one-row frame bytes,
        # None: its rows are refused by the decoder (its steps go as version-1 text)
        self.next_seq = 0
        self.acked = -1
        self.closed = False
        self.limited = True  # False for a spool reopened by sync: it refuses nothing
        self.unread: list[str] = []  # reopened files' tails that hold no whole record
        # (first seq, monotonic time) of the batches kept, the oldest unacknowledged first
        self._marks: deque[tuple[int, float]] = deque()
        self._lock_handle: TextIO | None = None
        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True)
            self._lock_handle = hold_lock(directory / f"{stem}.lock")

    @classmethod
    def reopen(cls, files: list[Path]) -> Spool:
        """A spool over the segment files one process left behind (``trainvitals sync``).

        Everything before the first file was acknowledged: that is why it was deleted.
        """
        names = [(NAME.match(f.name), f) for f in sorted(files)]
        parts = [(m.group("stem"), int(m.group("first")), f) for m, f in names if m is not None]
        spool = cls(files[0].parent, parts[0][0], max_bytes=1 << 62, max_record_bytes=1 << 62)
        for _, first, path in parts:
            found = ScannedFile(path)
            if found.unread:
                spool.unread.append(f"{path.name}: the last {found.unread} bytes are no whole "
                                    "record (cut by a killed process, or damaged) and are "
                                    "left out")
            spool._segments.append(_Segment(first, found.count, found.size, path,
                                            legacy=path.suffix == LEGACY_SUFFIX))
            spool._layouts.update(found.layouts)
            spool.stream = spool.stream or found.stream or _stream_of_text(found.first_text)
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
        return dataclasses.replace(record, seq=kept)

    def append_many(self, items: Sequence[tuple[Record, bool]]) -> list[int | SpoolRefused]:
        """``append`` for several ``(record, essential)`` pairs at once, with one write to the
        file: for each, the seq it was given or why it was refused, in order."""
        with self._lock:
            first = self.next_seq
            kept = [self._append(record, essential) for record, essential in items]
            if self.next_seq > first:
                self._mark(first)
            if self._handle is not None:
                self._handle.flush()  # survives a killed process (not a power loss: no fsync)
            return kept

    def _append(self, record: Record, essential: bool) -> int | SpoolRefused:
        if self.closed:
            return SpoolRefused("the monitor was closed")
        if self.stream is None:
            self.stream = (record.run, record.session, record.rank)
            self._packer = Packer(self.stream)
        seq = self.next_seq
        row = self._row(record, seq)
        if row is not None:
            size = entry_size(row)
            if not essential and self.size + size > self.max_bytes:
                return SpoolRefused(f"spool full ({self.max_bytes} bytes)")
            self._write(row, size)
        else:
            numbered = dataclasses.replace(record, seq=seq)
            line = encode(numbered)
            size = entry_size(line)
            if size + BATCH_OVERHEAD_BYTES > self.max_record_bytes:
                return SpoolRefused(f"record of {size} bytes is larger than a frame may be "
                                    f"({self.max_record_bytes} bytes)")
            why = self._precheck.problem(numbered, line)
            if why:  # the server would refuse it: keep the stream clean
                return SpoolRefused(f"record the server would refuse: {why}")
            if not essential and self.size + size > self.max_bytes:
                return SpoolRefused(f"spool full ({self.max_bytes} bytes)")
            self._write(line, size)
        self.next_seq += 1
        return seq

    def _row(self, record: Record, seq: int) -> Row | None:
        """``record`` as a row the server accepts and a frame can carry, or None (it is then
        kept as version-1 text, and the version-1 rules say whether, and why not)."""
        if type(record) is not Step or self._packer is None:
            return None
        row = self._packer.pack(record, seq)
        if row is None:
            return None
        layout = row.layout.id
        if layout not in self._row_frames:  # the first row of its layout: the decoder decides
            plain = dataclasses.replace(row, extras="")
            assert self.stream is not None
            self._row_frames[layout] = (None if problem(self.stream, plain) else
                                        len(assemble(self.stream, [plain])[0]))
            self._layouts[layout] = row.layout
        frame = self._row_frames[layout]
        if frame is None:
            return None
        if row.extras:  # a clip event or an origin: rare, and checked whole
            assert self.stream is not None
            if problem(self.stream, row):
                return None
            frame += len(row.extras.encode("utf-8", "surrogatepass")) + 16
        return row if frame + BATCH_OVERHEAD_BYTES <= self.max_record_bytes else None

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

    def _write(self, entry: Entry, size: int) -> None:
        seg = self._writing
        if seg is None or seg.size >= self._segment_bytes:
            if seg is not None and seg.last <= self.acked:  # kept only to be written on
                self._segments.remove(seg)
                self._drop(seg)
            self._close_handle()
            seg = self._open_segment()
        if seg.entries is not None:
            seg.entries.append(entry)
        elif self._handle is not None:
            out = []
            if isinstance(entry, str):
                out.append(entry_bytes(TEXT, entry.encode("utf-8", "surrogatepass")))
            else:
                if entry.layout.id not in seg.layouts:  # every file names what its rows use
                    seg.layouts.add(entry.layout.id)
                    layout = entry_bytes(LAYOUT, entry.layout.to_json().encode("utf-8"))
                    out.append(layout)
                    seg.size += len(layout)
                out.append(entry_bytes(ROW, row_payload(entry)))
            self._handle.write(b"".join(out))  # flushed by append_many, once per batch
        seg.count += 1
        seg.size += size

    def _open_segment(self) -> _Segment:
        seg = _Segment(self.next_seq)
        if self.directory is None:
            seg.entries = []
        else:
            assert self.stream is not None
            seg.path = self.directory / f"{self.stem}.{seg.first:012d}{BINARY_SUFFIX}"
            self._handle = seg.path.open("ab")
            head = MAGIC + entry_bytes(STREAM, stream_payload(self.stream))
            self._handle.write(head)
            seg.size += len(head)
        self._segments.append(seg)
        self._writing = seg
        return seg

    # ------------------------------------------------------------ sender side

    def read(self, first: int, max_records: int, max_bytes: int) -> list[Entry]:
        """Records from ``first`` on (or the oldest kept), at most ``max_records`` and, except
        for the first one, ``max_bytes`` in all (as they are kept: about what they take in a
        frame)."""
        out: list[Entry] = []
        total = 0
        with self._lock:
            for seg in self._segments:
                if seg.last < first:
                    continue
                for entry in self._entries(seg, max(first, seg.first)):
                    total += entry_size(entry)
                    if out and (total > max_bytes or len(out) >= max_records):
                        return out
                    out.append(entry)
        return out

    def _entries(self, seg: _Segment, start: int) -> Iterator[Entry]:
        """The records of ``seg`` from seq ``start`` on. Reading on where the previous read
        stopped seeks there instead of skipping records (the usual case)."""
        if seg.entries is not None:
            yield from seg.entries[start - seg.first:]
            return
        assert seg.path is not None
        if seg.legacy:
            yield from self._lines(seg, start)
            return
        f = self._reader_of(seg.path)
        resume = self._cursor[:2] == (start, seg.path)
        seq = start if resume else seg.first
        end = self._cursor[2] if resume else 0
        for at, kind, payload in read_entries(f, end):
            end = at + ENTRY_HEAD + len(payload)
            if kind == LAYOUT:
                layout = Layout.from_json(payload)
                self._layouts.setdefault(layout.id, layout)
            if kind not in (ROW, TEXT):
                continue
            if seq >= start:
                self._cursor = (seq, seg.path, at)
                yield (parse_row(payload, self._layouts) if kind == ROW
                       else payload.decode("utf-8", "surrogatepass"))
            seq += 1
        self._cursor = (seq, seg.path, end)  # after the last whole entry

    def _lines(self, seg: _Segment, start: int) -> Iterator[str]:
        """The lines of a legacy (.jsonl) segment from seq ``start`` on."""
        assert seg.path is not None
        f = self._reader_of(seg.path)
        f.seek(0)
        for _ in range(start - seg.first):
            f.readline()
        while True:
            raw = f.readline()
            if not raw.endswith(b"\n"):  # end of file (or a line cut by a killed writer)
                return
            yield raw[:-1].decode("utf-8", "surrogatepass")

    def record(self, entry: Entry) -> Record:
        """The record an entry keeps (``ProtocolError`` for a damaged one)."""
        if isinstance(entry, str):
            record = decode(entry)
            assert isinstance(record, Record)
            return record
        assert self.stream is not None
        return row_step(self.stream, entry)

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


def read_records(files: Sequence[Path]) -> list[Record]:
    """Every record the segment files of one stream hold, in order (what ``sync`` would
    upload): for looking into a spool."""
    spool = Spool.reopen(list(files))
    try:
        return [spool.record(e) for e in spool.read(spool.acked + 1, 1 << 62, 1 << 62)]
    finally:
        spool.close()


def _stream_of_text(text: str | None) -> Stream | None:
    if text is None:
        return None
    try:
        record = decode(text)
    except Exception:  # a damaged legacy file: sync says so when it reads the record
        return None
    return (record.run, record.session, record.rank) if isinstance(record, Record) else None
