"""Steps packed as rows of float64, and version-2 frames assembled from rows.

A training process logs the same names step after step. ``Packer`` gives each distinct set of
value paths (a ``Layout``: the paths of ``binary``, in order, and the tensors' dtypes) a number
the first time it appears, and packs a step as its four fixed fields and one float64 array in
its layout's order: the array's bytes are what a frame carries, so the spool can keep them and
the sender can join them without a Python object per value. ``assemble`` puts rows — and
version-1 record texts, for what cannot be packed (run start and end records, a step with a
count beyond 2⁵³, …) — into one version-2 frame; consecutive rows of one layout are joined as
they are. ``problem`` says whether the server would refuse a row (it decodes the one-row frame:
the spool asks it for the first row of each layout and for rows with a clip event or origin).

Rows are built for one stream (the spool's); the frame names it once.
"""

from __future__ import annotations

import json
import math
import struct
import sys
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from operator import attrgetter, itemgetter
from typing import Any

from trainvitals.protocol import codec
from trainvitals.protocol.binary import (
    BINARY_VERSION,
    EXACT,
    MAGIC,
    MAX_PATHS,
    STATS,
    TOP,
    decode_binary,
)
from trainvitals.protocol.errors import ProtocolError
from trainvitals.protocol.messages import Backlog, Batch, Step

__all__ = ["Layout", "Packer", "Row", "assemble", "problem", "row_step"]

Stream = tuple[str, str, int]  # (run, session, rank), as a binary frame lists streams
_LITTLE = sys.byteorder == "little"
_WITH_HEADROOM = attrgetter(*STATS)
_WITHOUT_HEADROOM = attrgetter(*STATS[:-1])
_TOP = attrgetter(*TOP)
MAX_LAYOUTS = 4096  # layouts one stream remembers; steps of more go as version-1 text
_RECORD_BYTES = 2 + 8 + 8 + 8  # stream index, seq, step, time: the fixed columns of a record


@dataclass(frozen=True, slots=True, eq=False)
class Layout:
    """The value paths of a row, in order, and the dtype of each tensor they name."""

    id: int
    names: tuple[str, ...]
    dtypes: tuple[tuple[str, str], ...] = ()
    counts: tuple[int, ...] = field(default=(), repr=False)  # where the counts are in a row
    others: tuple[int, ...] = field(default=(), repr=False)  # where everything else is

    def to_json(self) -> str:
        return json.dumps({"id": self.id, "names": list(self.names),
                           "dtypes": dict(self.dtypes)}, separators=(",", ":"),
                          ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str | bytes) -> Layout:
        """A layout ``to_json`` wrote; ``ValueError`` for anything else."""
        obj = json.loads(text)
        if not (isinstance(obj, dict) and isinstance(obj.get("id"), int)
                and isinstance(obj.get("names"), list) and isinstance(obj.get("dtypes"), dict)
                and all(isinstance(n, str) for n in obj["names"])):
            raise ValueError("not a row layout")
        names = tuple(obj["names"])
        return cls(obj["id"], names, tuple(obj["dtypes"].items()), *_positions(names))


@dataclass(frozen=True, slots=True)
class Row:
    """One step, packed: ``values`` holds ``len(layout.names)`` little-endian float64;
    ``extras`` the step's clip event and origin as a JSON object (``""``: neither)."""

    layout: Layout
    seq: int
    step: int
    time: float
    values: bytes
    extras: str = ""


def _positions(names: Sequence[str]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Where a row's counts are, and where its other values are."""
    counts = tuple(i for i, n in enumerate(names)
                   if n.startswith("t/") and n.rpartition("/")[2] in STATS[:4])
    return counts, tuple(i for i in range(len(names)) if i not in set(counts))


class Packer:
    """Packs the steps of one stream; remembers each layout it has made (not thread-safe: the
    spool's lock)."""

    def __init__(self, stream: Stream) -> None:
        self.stream = stream
        self._layouts: dict[tuple[Any, ...], Layout] = {}
        self._next_id = 0

    def pack(self, step: Step, seq: int) -> Row | None:
        """``step`` as the row it is with ``seq``, or None when it cannot be a row (it then
        goes as a version-1 record, validated as such): not of this stream, a field out of
        the 64-bit range or of the wrong type, a count that is no whole number below 2⁵³,
        more value paths than a frame may name."""
        if (step.run, step.session, step.rank) != self.stream or type(step.rank) is not int:
            return None
        if not (_int(step.step) and type(seq) is int and 0 <= seq <= codec.INT_MAX):
            return None
        if type(step.time) is not float or not math.isfinite(step.time):
            return None
        top = _TOP(step)
        tensors = step.tensors
        key = (tuple(v is not None for v in top), tuple(step.components), tuple(step.scalars),
               tuple((n, t.dtype, t.headroom is not None) for n, t in tensors.items()))
        layout = self._layouts.get(key)
        if layout is None:
            layout = self._new_layout(key)
            if layout is None:
                return None
        flat: list[Any] = [v for v in top if v is not None]
        flat += step.components.values()
        flat += step.scalars.values()
        for t in tensors.values():
            flat += _WITHOUT_HEADROOM(t) if t.headroom is None else _WITH_HEADROOM(t)
        if layout.counts:
            counts = itemgetter(*layout.counts)(flat)
            counts = counts if isinstance(counts, tuple) else (counts,)
            if not ({*map(type, counts)} <= {int} and min(counts) >= 0
                    and max(counts) < EXACT):
                return None
        kinds = {*map(type, flat if not layout.counts else itemgetter(*layout.others)(flat))}
        if not kinds <= {float, int}:
            return None  # (bool is neither: the version-1 rules decide about it)
        if int in kinds and not all(-EXACT < v < EXACT for v in flat if type(v) is int):
            return None  # an int a float64 would round: version 1 carries it exactly
        values = array("d", flat)
        if not _LITTLE:
            values.byteswap()
        extras = _extras(step)
        return Row(layout, seq, step.step, step.time, values.tobytes(), extras)

    def _new_layout(self, key: tuple[Any, ...]) -> Layout | None:
        present, components, scalars, tensors = key
        names = [k for k, there in zip(TOP, present, strict=True) if there]
        names += [f"c/{n}" for n in components]
        names += [f"s/{n}" for n in scalars]
        for name, _, headroom in tensors:
            names += [f"t/{name}/{s}" for s in (STATS if headroom else STATS[:-1])]
        if len(names) > MAX_PATHS or len(set(names)) != len(names) or \
                len(self._layouts) >= MAX_LAYOUTS:  # (names that change every step)
            return None
        layout = Layout(self._next_id, tuple(names),
                        tuple((n, d) for n, d, _ in tensors), *_positions(names))
        self._layouts[key] = layout
        self._next_id += 1
        return layout


def _int(value: Any) -> bool:
    return type(value) is int and codec.INT_MIN <= value <= codec.INT_MAX


def _extras(step: Step) -> str:
    if step.clip is None and step.origin is None:
        return ""
    extra = {k: codec._value_to_wire(v) for k, v in (("clip", step.clip),
                                                      ("origin", step.origin)) if v is not None}
    return json.dumps(extra, separators=(",", ":"), allow_nan=False, ensure_ascii=False)


# --------------------------------------------------------------------------- frames


def assemble(stream: Stream, entries: Sequence[Row | str], *, dropped: int = 0,
             backlog: Backlog | None = None, max_bytes: int = 1 << 62) -> tuple[bytes, int]:
    """One version-2 frame of the first entries (rows of ``stream``, or version-1 record
    texts), and how many it took: all of them, or fewer where the next would take the frame
    past ``max_bytes`` or past what a frame may name (the paths of its rows together, one
    dtype per tensor). The first entry is always taken."""
    if isinstance(dropped, bool) or not isinstance(dropped, int) or dropped < 0:
        raise ValueError(f"dropped must be a count, got {dropped!r}")
    plan = _Plan(stream)
    for entry in entries:
        if not plan.add(entry, max_bytes):
            break
    return plan.frame(dropped, backlog), plan.n


class _Plan:
    """The entries of one frame, as they are added."""

    def __init__(self, stream: Stream) -> None:
        self.stream = stream
        self.n = 0
        self.names: dict[str, int] = {}
        self.dtypes: dict[str, str] = {}
        self.rows: list[Row | None] = []  # None: a version-1 text, in ``others``
        self.others: dict[str, Any] = {}
        self.extras: dict[str, Any] = {}
        self.positions: dict[int, list[int]] = {}  # layout id -> its paths in ``names``
        self.leading: dict[int, bool] = {}  # layout id -> its paths lead the frame's, in order
        # the header's fixed part: its keys, brackets, "dropped" and "backlog" at their widest
        self.size = 8 + 4 + _HEADER_FIXED + _json_size(list(stream))

    def add(self, entry: Row | str, max_bytes: int) -> bool:
        if isinstance(entry, str):
            grown = len(entry.encode("utf-8", "surrogatepass")) + 12  # "<i>": and a comma
            # (a record re-dumped compactly is never longer than ``encode`` wrote it)
            if self.n and self._estimate(grown, len(self.names)) > max_bytes:
                return False
            self.others[str(self.n)] = json.loads(entry)
            self.rows.append(None)
        else:
            layout = entry.layout
            new = [] if layout.id in self.positions else \
                [n for n in layout.names if n not in self.names]
            clash = any(self.dtypes.get(t, d) != d for t, d in layout.dtypes)
            width = len(self.names) + len(new)
            grown = sum(len(n.encode("utf-8", "surrogatepass")) + 3 for n in new) + \
                sum(len(t) + len(d) + 6 for t, d in layout.dtypes if t not in self.dtypes) + \
                (len(entry.extras) + 12 if entry.extras else 0)
            if self.n and (clash or width > MAX_PATHS
                           or self._estimate(grown, width) > max_bytes):
                return False
            for name in new:
                self.names[name] = len(self.names)
            self.dtypes.update(layout.dtypes)
            if layout.id not in self.positions:
                pos = [self.names[n] for n in layout.names]
                self.positions[layout.id] = pos
                self.leading[layout.id] = pos == list(range(len(pos)))
            if entry.extras:
                self.extras[str(self.n)] = json.loads(entry.extras)
            self.rows.append(entry)
        self.size += grown
        self.n += 1
        return True

    def _estimate(self, grown: int, width: int) -> int:
        """The frame's size with one more record (an upper bound)."""
        return self.size + grown + (self.n + 1) * (_RECORD_BYTES + (width + 7) // 8 + 8 * width)

    def frame(self, dropped: int, backlog: Backlog | None) -> bytes:
        header: dict[str, Any] = {"names": list(self.names), "streams": [list(self.stream)]}
        for key, value in (("dropped", dropped), ("dtypes", self.dtypes),
                           ("extras", self.extras), ("others", self.others)):
            if value:
                header[key] = value
        if backlog is not None:
            header["backlog"] = codec._value_to_wire(backlog)
        head = json.dumps(header, separators=(",", ":"), allow_nan=False,
                          ensure_ascii=False).encode("utf-8", "surrogatepass")
        width, n = len(self.names), self.n
        stride = (width + 7) // 8
        seqs = array("q", [0 if r is None else r.seq for r in self.rows])
        steps = array("q", [0 if r is None else r.step for r in self.rows])
        times = array("d", [0.0 if r is None else r.time for r in self.rows])
        for column in (seqs, steps, times):
            if not _LITTLE:
                column.byteswap()
        masks = {lid: _mask(pos, stride) for lid, pos in self.positions.items()}
        blank = bytes(stride)
        bits = b"".join(blank if r is None else masks[r.layout.id] for r in self.rows)
        values = b"".join(self._row_bytes(r, width) for r in self.rows)
        return b"".join((struct.pack("<3sBI", MAGIC, BINARY_VERSION, len(head)), head,
                         struct.pack("<I", n), bytes(2 * n), seqs.tobytes(), steps.tobytes(),
                         times.tobytes(), bits, values))

    def _row_bytes(self, row: Row | None, width: int) -> bytes:
        if row is None:
            return bytes(8 * width)
        pos = self.positions[row.layout.id]
        if self.leading[row.layout.id]:  # the row's paths lead the frame's: pad the rest
            return row.values + bytes(8 * (width - len(pos)))
        out = array("d", bytes(8 * width))
        mine = array("d", row.values)  # (little-endian both: no swap needed to move them)
        for j, at in enumerate(pos):
            out[at] = mine[j]
        return out.tobytes()


_HEADER_FIXED = 400  # {"names":[],"streams":[],"dropped":…,"dtypes":{},"extras":{},"others":{},
# "backlog":{…}}: keys and brackets, a 19-digit count, and a backlog of five 19-digit numbers


def _json_size(value: Any) -> int:
    """Bytes ``value`` takes in the header (as ``frame`` dumps it)."""
    return len(json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass"))


def _mask(positions: list[int], stride: int) -> bytes:
    bits = bytearray(stride)
    for at in positions:
        bits[at // 8] |= 1 << (at % 8)
    return bytes(bits)


def row_step(stream: Stream, row: Row) -> Step:
    """The step a row packs (what the server decodes from it)."""
    (record,) = decode_binary(assemble(stream, [row])[0]).records
    assert isinstance(record, Step)
    return record


def problem(stream: Stream, row: Row) -> str:
    """Why the server would refuse ``row``; ``""`` when it would not."""
    try:
        batch = decode_binary(assemble(stream, [row])[0])
    except ProtocolError as exc:
        return str(exc)
    assert isinstance(batch, Batch) and len(batch.records) == 1
    return ""
