"""The spool's segment files: a stream's records, in order, as length-prefixed binary entries.

A segment ``<stem>.<first seq, 12 digits>.tvs`` holds the records ``first``, ``first + 1``, …
of one stream::

    b"TVS\\x01"                                     magic and file version
    then entries: kind (1 byte) | payload length (u32) | crc32 of the payload (u32) | payload
      b"S"  the stream: JSON [run, session, rank]; the first entry of every file
      b"L"  a row layout (``protocol.rows.Layout.to_json``), before its first row in the file
      b"R"  a step as a row: <layout id u32, seq i64, step i64, time f64, extras length u32>,
            the extras (JSON, UTF-8), the values (float64)
      b"J"  a record as version-1 JSON text (run start and end; a step that cannot be a row)

Integers and floats are little-endian. Every file reads alone (it names its stream and the
layouts its rows use), so ``trainvitals sync`` can upload any file that is left. A file ends at
its last whole entry: an entry cut short by a killed writer, or one whose checksum does not
match, is where reading stops. Rows are kept as the bytes a version-2 frame carries
(``protocol.rows``), so nothing is decoded between the spool and the wire.

Segments ``<stem>.<first>.jsonl`` (one version-1 record per line) were written by versions
before 0.2; they are still read, for ``sync``.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from trainvitals.protocol.rows import Layout, Row

__all__ = ["BINARY_SUFFIX", "ENTRY_HEAD", "LEGACY_SUFFIX", "MAGIC", "Entry", "ScannedFile",
           "entry_bytes", "entry_size", "parse_row", "read_entries", "row_payload",
           "stream_payload"]

BINARY_SUFFIX, LEGACY_SUFFIX = ".tvs", ".jsonl"
MAGIC = b"TVS\x01"
STREAM, LAYOUT, ROW, TEXT = b"S", b"L", b"R", b"J"
_ENTRY = struct.Struct("<cII")  # kind, payload length, crc32
_ROW = struct.Struct("<IqqdI")  # layout id, seq, step, time, extras length
ENTRY_HEAD = _ENTRY.size
ROW_OVERHEAD = _ENTRY.size + _ROW.size

Entry = Row | str  # what the spool hands the sender: a row, or a version-1 record's text


def entry_bytes(kind: bytes, payload: bytes) -> bytes:
    """One entry as it is written."""
    return _ENTRY.pack(kind, len(payload), zlib.crc32(payload)) + payload


def row_payload(row: Row) -> bytes:
    extras = row.extras.encode("utf-8", "surrogatepass")
    return _ROW.pack(row.layout.id, row.seq, row.step, row.time, len(extras)) + extras + \
        row.values


def stream_payload(stream: tuple[str, str, int]) -> bytes:
    return json.dumps(list(stream), ensure_ascii=False).encode("utf-8", "surrogatepass")


def entry_size(entry: Entry) -> int:
    """Bytes ``entry`` takes in a file (without the layout it may bring along)."""
    if isinstance(entry, str):
        return _ENTRY.size + len(entry.encode("utf-8", "surrogatepass"))
    return ROW_OVERHEAD + len(entry.extras.encode("utf-8", "surrogatepass")) + len(entry.values)


def parse_row(payload: bytes, layouts: dict[int, Layout]) -> Row:
    layout_id, seq, step, time, extras_len = _ROW.unpack_from(payload)
    extras = payload[_ROW.size:_ROW.size + extras_len].decode("utf-8", "surrogatepass")
    return Row(layouts[layout_id], seq, step, time, payload[_ROW.size + extras_len:], extras)


def read_entries(f: BinaryIO, offset: int) -> Iterator[tuple[int, bytes, bytes]]:
    """``(offset, kind, payload)`` of each whole entry from ``offset`` on (the file's first
    entry for offset 0); stops at the end, or at a cut or damaged entry."""
    f.seek(offset)
    if offset == 0 and f.read(len(MAGIC)) != MAGIC:
        return
    while True:
        at = f.tell()
        head = f.read(_ENTRY.size)
        if len(head) < _ENTRY.size:
            return
        kind, length, crc = _ENTRY.unpack(head)
        payload = f.read(length)
        if len(payload) < length or zlib.crc32(payload) != crc:
            return
        yield at, kind, payload


class ScannedFile:
    """What one segment file holds: its stream, the layouts it defines, its records (count
    and whole size)."""

    def __init__(self, path: Path) -> None:
        self.stream: tuple[str, str, int] | None = None
        self.layouts: dict[int, Layout] = {}
        self.count = 0
        self.size = 0
        self.first_text: str | None = None  # a legacy file's first record (its stream)
        self.unread = 0  # bytes after the last whole entry (cut by a killed writer, damaged)
        if path.suffix == LEGACY_SUFFIX:
            data = path.read_bytes()
            self.count, self.size = data.count(b"\n"), len(data)
            head = data.split(b"\n", 1)[0]
            self.first_text = head.decode("utf-8", "surrogatepass") if self.count else None
            return
        with path.open("rb") as f:
            end = len(MAGIC)
            for at, kind, payload in read_entries(f, 0):
                end = at + _ENTRY.size + len(payload)
                if kind == STREAM:
                    run, session, rank = json.loads(payload)
                    self.stream = (run, session, rank)
                elif kind == LAYOUT:
                    layout = Layout.from_json(payload)
                    self.layouts[layout.id] = layout
                elif kind in (ROW, TEXT):
                    self.count += 1
            self.size = end
            self.unread = path.stat().st_size - end
