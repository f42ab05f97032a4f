"""Protocol version 2: a batch of records as one binary, columnar frame.

A version-1 frame is JSON text: every value is a Python object on both sides, written and
parsed digit by digit. A version-2 frame carries the same records with each step's numbers
packed as float64, the names written once per frame::

    offset      size        content (little-endian)
    0           3           magic b"TVB"
    3           1           version: 2
    4           4           H, the header's length (u32)
    8           H           header: a UTF-8 JSON object (the JSON rules of version 1, NaN as
                            "NaN"): "names" (the frame's value paths), "streams" ([run,
                            session, rank] triples), optional "dropped", "backlog" (as in a
                            v1 batch), "dtypes" ({tensor: dtype}), "extras" ({"<i>": {"clip":
                            …, "origin": …}}), "others" ({"<i>": <v1 record object>})
    8+H         4           n, the number of records (u32)
    then        n × 2       stream index of each record (u16, into "streams")
                n × 8       seq (i64)
                n × 8       step (i64)
                n × 8       time (f64)
                n × B       presence bits, B = ceil(K / 8) bytes per record, K = len(names):
                            bit j (LSB first) of record i says names[j] has a value
                n × K × 8   values (f64; NaN and ±Inf as themselves; absent: 0)

A value path is ``loss``, ``loss_used``, ``grad_norm``, ``grad_norm_post``, ``lr``,
``c/<component>``, ``s/<scalar>`` or ``t/<tensor>/<stat>`` (``count``, ``nan``, ``posinf``,
``neginf``, ``min``, ``max``, ``mean``, ``absmax``, ``headroom``; counts must be whole and
below 2⁵³). A record listed in "others" (a ``run_start``, a ``run_end``, a step that cannot be
packed) is that v1 object; its columns are ignored. Names are sent once per frame, not once
per stream: every frame decodes alone, so a resent or re-uploaded frame needs no state from
an earlier one (docs/performance.md weighs the two).

``decode`` (``codec``) reads both versions: binary frames that start with the magic here, JSON
otherwise. Decoding validates every field as version 1 does and raises ``ProtocolError``.
"""

from __future__ import annotations

import json
import math
import struct
import sys
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

from trainvitals.protocol import codec
from trainvitals.protocol.errors import MALFORMED, UNSUPPORTED_VERSION, ProtocolError
from trainvitals.protocol.messages import (
    Backlog,
    Batch,
    Record,
    RunEnd,
    RunStart,
    Step,
    TensorStats,
)

__all__ = ["BINARY_VERSION", "MAGIC", "decode_binary_values", "encode_batch_v2", "is_binary"]

MAGIC = b"TVB"
BINARY_VERSION = 2
TOP = ("loss", "loss_used", "grad_norm", "grad_norm_post", "lr")
COUNTS = ("count", "nan", "posinf", "neginf")
STATS = (*COUNTS, "min", "max", "mean", "absmax", "headroom")
EXACT = 2**53  # float64 carries every integer below it exactly
# Value paths one frame may name: as many as the widest step version 1 allows (5 top-level
# values, MAX_ENTRIES components, scalars and tensors of 9 statistics), so any valid step fits;
# a frame whose steps together name more sends the rest as version-1 objects ("others").
MAX_PATHS = len(TOP) + 2 * codec.MAX_ENTRIES + len(STATS) * codec.MAX_ENTRIES
_HEAD = struct.Struct("<3sBI")
_LITTLE = sys.byteorder == "little"


def is_binary(data: str | bytes) -> bool:
    """Whether ``data`` is a binary (version 2+) frame rather than JSON."""
    return isinstance(data, (bytes, bytearray, memoryview)) and bytes(data[:3]) == MAGIC


# --------------------------------------------------------------------------- encode


def encode_batch_v2(records: Sequence[Record], dropped: int = 0,
                    backlog: Backlog | None = None) -> bytes:
    """One version-2 frame carrying ``records`` (decodes to ``Batch(records, dropped,
    backlog)``)."""
    if isinstance(dropped, bool) or not isinstance(dropped, int) or dropped < 0:
        raise ValueError(f"dropped must be a count, got {dropped!r}")
    names: dict[str, int] = {}
    streams: dict[tuple[str, str, int], int] = {}
    dtypes: dict[str, str] = {}
    rows: list[dict[int, float] | None] = []  # None: the record is in "others"
    extras: dict[str, Any] = {}
    others: dict[str, Any] = {}
    for i, record in enumerate(records):
        row = _pack(record, names, dtypes) if isinstance(record, Step) else None
        if row is None:
            others[str(i)] = json.loads(codec.encode(record))
            rows.append(None)
            continue
        rows.append(row)
        assert isinstance(record, Step)
        extra = {k: v for k, v in (("clip", record.clip), ("origin", record.origin))
                 if v is not None}
        if extra:
            extras[str(i)] = {k: codec._value_to_wire(v) for k, v in extra.items()}
    header: dict[str, Any] = {"names": list(names), "streams": []}
    index = [streams.setdefault((r.run, r.session, r.rank), len(streams)) for r in records]
    if len(streams) > 0xFFFF:
        raise ValueError("a frame carries at most 65,535 streams")
    header["streams"] = [list(s) for s in streams]
    for key, value in (("dropped", dropped), ("dtypes", dtypes), ("extras", extras),
                       ("others", others)):
        if value:
            header[key] = value
    if backlog is not None:
        header["backlog"] = codec._value_to_wire(backlog)
    return _frame(header, records, index, rows, len(names))


def _pack(step: Step, names: dict[str, int], dtypes: dict[str, str]) -> dict[int, float] | None:
    """The step's values by name index, or None when it cannot be packed (send it as v1): a
    seq or step beyond 64 bits, a count beyond 2**53, a tensor whose dtype differs from an
    earlier step's in this frame, or more names than a frame may hold."""
    if not (_int64(step.seq) and _int64(step.step)):
        return None
    paths: list[tuple[str, float | int]] = [(k, v) for k in TOP
                                            if (v := getattr(step, k)) is not None]
    for prefix, values in (("c/", step.components), ("s/", step.scalars)):
        paths += [(prefix + name, value) for name, value in values.items()]
    for name, stats in step.tensors.items():
        if dtypes.get(name, stats.dtype) != stats.dtype:
            return None
        if any(getattr(stats, c) >= EXACT for c in COUNTS):
            return None
        paths += [(f"t/{name}/{stat}", v) for stat in STATS
                  if (v := getattr(stats, stat)) is not None]
    if len(names) + sum(path not in names for path, _ in paths) > MAX_PATHS:
        return None
    for name, stats in step.tensors.items():
        dtypes.setdefault(name, stats.dtype)
    return {names.setdefault(path, len(names)): float(value) for path, value in paths}


def _int64(value: int) -> bool:
    return codec.INT_MIN <= value <= codec.INT_MAX


def _frame(header: dict[str, Any], records: Sequence[Record], index: list[int],
           rows: list[dict[int, float] | None], width: int) -> bytes:
    head = json.dumps(header, separators=(",", ":"), allow_nan=False,
                      ensure_ascii=False).encode("utf-8", "surrogatepass")
    n, stride = len(records), (width + 7) // 8
    streams = array("H", index)
    packed = [r if isinstance(r, Step) and rows[i] is not None else None
              for i, r in enumerate(records)]
    seqs = array("q", [0 if r is None else r.seq for r in packed])
    steps = array("q", [0 if r is None else r.step for r in packed])
    times = array("d", [0.0 if r is None else float(r.time) for r in packed])
    bits = bytearray(n * stride)
    values = array("d", bytes(8 * n * width))
    for i, row in enumerate(rows):
        for j, value in (row or {}).items():
            bits[i * stride + j // 8] |= 1 << (j % 8)
            values[i * width + j] = value
    parts = [_HEAD.pack(MAGIC, BINARY_VERSION, len(head)), head, struct.pack("<I", n)]
    for column in (streams, seqs, steps, times):
        if not _LITTLE:
            column.byteswap()
        parts.append(column.tobytes())
    parts.append(bytes(bits))
    if not _LITTLE:
        values.byteswap()
    parts.append(values.tobytes())
    return b"".join(parts)


# --------------------------------------------------------------------------- decode


def decode_binary(data: bytes | bytearray | memoryview) -> Batch:
    """The batch in one binary frame; ``ProtocolError`` for anything that is not one."""
    return decode_binary_values(data)[0]


def decode_binary_values(data: bytes | bytearray | memoryview
                         ) -> tuple[Batch, list[dict[str, float] | None]]:
    """``decode_binary``, and each record's series values as ``step_values`` gives them
    (``protocol.series``: same names, same values, same order; ``None`` for a record that is
    no step), built from the columns without walking the ``Step`` objects again.

    Steps are decoded by the plan of their presence bits (made once per distinct bitmap:
    which values go where, which are counts), their values taken with one ``itemgetter``
    each; the counts are checked with a few C-level calls per record. A frame that fails any
    of those checks is decoded again value by value (``_decode_steps``), which says what is
    wrong exactly as it always did: the fast path only ever takes frames that one accepts,
    and yields the same records (``tests/protocol/test_binary_fast.py``).
    """
    parts = _parse(data)
    try:
        records, values = _fast_steps(parts)
    except ProtocolError:  # the reference path says what is wrong, and where
        records = values = None
    if records is None or values is None:
        records = _decode_steps(parts)
        values = [None] * len(records)
    f = parts.fields
    return (Batch(records=tuple(records), dropped=f.get("dropped", codec._count, 0),
                  backlog=f.get("backlog", codec._backlog, None)), values)


@dataclass(slots=True)
class _Parts:
    """A frame's header and columns, read and checked as far as they go without records."""

    fields: codec._Fields
    n: int
    names: list[str]
    streams: list[tuple[str, str, int]]
    index: array[int]
    seqs: array[int]
    steps: array[int]
    times: array[float]
    stride: int
    bits: bytes
    values: array[float]
    others: dict[str, Any]
    extras: dict[str, Any]
    dtypes: dict[str, str]


def _parse(data: bytes | bytearray | memoryview) -> _Parts:
    buf = bytes(data)
    if len(buf) < _HEAD.size:
        raise ProtocolError("binary frame is shorter than its 8-byte header", code=MALFORMED)
    magic, version, head_len = _HEAD.unpack_from(buf)
    if magic != MAGIC:
        raise ProtocolError("binary frame does not start with b'TVB'", code=MALFORMED)
    if version != BINARY_VERSION:
        raise ProtocolError(f"unsupported binary protocol version {version}; this side reads "
                            f"{BINARY_VERSION} (and JSON version {codec.PROTOCOL_VERSION})",
                            code=UNSUPPORTED_VERSION)
    reader = _Reader(buf, _HEAD.size)
    header = _header(reader.take(head_len))
    n = reader.unpack("<I")
    names = _names(header)
    streams = _streams(header)
    width = len(names)
    index = reader.column("H", n)
    seqs, steps, times = reader.column("q", n), reader.column("q", n), reader.column("d", n)
    stride = (width + 7) // 8
    bits = reader.take(n * stride)
    values = reader.column("d", n * width)
    if reader.left():
        raise ProtocolError(f"binary frame has {reader.left()} bytes after its last column",
                            code=MALFORMED)
    f = codec._Fields(header, "frame (binary batch)")
    others = f.get("others", lambda v: _by_record(v, n), {})
    extras = f.get("extras", lambda v: _by_record(v, n), {})
    dtypes = f.get("dtypes", codec._string_map, {})
    if n > codec.MAX_ENTRIES:
        raise ProtocolError(f"frame (binary batch): {n} records, more than {codec.MAX_ENTRIES}")
    return _Parts(bits=bits, dtypes=dtypes, extras=extras, fields=f, index=index, n=n,
                  names=names, others=others, seqs=seqs, steps=steps, streams=streams,
                  stride=stride, times=times, values=values)


def _decode_steps(p: _Parts) -> list[Record]:
    """The frame's records, value by value: the reference every faster path must match."""
    names, width, stride, bits, values = p.names, len(p.names), p.stride, p.bits, p.values
    records: list[Record] = []
    for i in range(p.n):
        where = f"frame (binary batch).records[{i}]"
        if str(i) in p.others:
            records.append(_other(p.others[str(i)], where))
            continue
        if p.index[i] >= len(p.streams):
            raise ProtocolError(f"{where}: stream index {p.index[i]} is beyond the "
                                f"{len(p.streams)} streams of the frame")
        row = {names[j]: values[i * width + j] for j in range(width)
               if bits[i * stride + j // 8] >> (j % 8) & 1}
        records.append(_step(where, p.streams[p.index[i]], p.seqs[i], p.steps[i], p.times[i],
                             row, p.dtypes, p.extras.get(str(i))))
    return records


class _Plan:
    """How to read a step from its row of values, for one presence bitmap."""

    __slots__ = ("components", "counts", "pick", "scalars", "series", "tensors", "top")

    def __init__(self, names: list[str], present: list[int],
                 dtypes: dict[str, str]) -> None:
        at = {names[j]: j for j in present}  # path -> position in the row
        self.top = tuple(at.get(k) for k in TOP)
        components = [(path[2:], j) for path, j in at.items() if path[:2] == "c/"]
        scalars = [(path[2:], j) for path, j in at.items() if path[:2] == "s/"]
        parts: dict[str, dict[str, int]] = {}
        for path, j in at.items():
            if path[:2] == "t/":
                name, _, stat = path[2:].rpartition("/")
                parts.setdefault(name, {})[stat] = j
        if any(len(found) > codec.MAX_ENTRIES for found in (components, scalars, parts)):
            raise ProtocolError("too many entries")  # (the reference path says it in full)
        if any(s not in got for got in parts.values() for s in STATS[:-1]):
            raise ProtocolError("a tensor lacks statistics")
        self.components = (tuple(k for k, _ in components), _getter([j for _, j in components]))
        self.scalars = (tuple(k for k, _ in scalars), _getter([j for _, j in scalars]))
        self.tensors = tuple((name, dtypes.get(name, ""),
                              itemgetter(*(got[s] for s in STATS[:-1])), got.get("headroom"))
                             for name, got in parts.items())
        counts = [got[c] for got in parts.values() for c in COUNTS]
        self.counts = _getter(counts)
        # The series names and where their values are, in step_values' order.
        series = [(k, j) for k, j in zip(TOP, self.top, strict=True) if j is not None]
        series += [("loss/" + k, j) for k, j in components]
        series += [("scalar/" + k, j) for k, j in scalars]
        for name, got in parts.items():
            series += [(f"tensor/{name}/{s}", got[s]) for s in STATS if s in got]
        self.series = (tuple(k for k, _ in series), _getter([j for _, j in series]))
        self.pick = bool(counts)


def _getter(positions: list[int]) -> Any:
    """A function of a row giving the tuple of its values at ``positions``."""
    if not positions:
        return lambda row: ()
    if len(positions) == 1:
        (j,) = positions
        return lambda row: (row[j],)
    return itemgetter(*positions)


def _fast_steps(p: _Parts) -> tuple[list[Record] | None, list[dict[str, float] | None] | None]:
    """The records and their series values by plans (see ``decode_binary_values``); None
    where something needs the reference path to say what is wrong."""
    n, width, stride = p.n, len(p.names), p.stride
    flat = p.values.tolist()
    bits, streams, seqs, steps, times = p.bits, p.streams, p.seqs, p.steps, p.times
    index, others, extras, dtypes = p.index, p.others, p.extras, p.dtypes
    plans: dict[bytes, _Plan] = {}
    records: list[Record] = []
    values: list[dict[str, float] | None] = []
    isfinite, copysign, is_integer = math.isfinite, math.copysign, float.is_integer
    ones = (1.0,) * (4 * codec.MAX_ENTRIES)
    for i in range(n):
        if others and str(i) in others:
            records.append(_other(others[str(i)], f"frame (binary batch).records[{i}]"))
            values.append(None)
            continue
        seq, time = seqs[i], times[i]
        if seq < 0 or index[i] >= len(streams) or not isfinite(time):
            return None, None
        mask = bits[i * stride:(i + 1) * stride]
        plan = plans.get(mask)
        if plan is None:
            present = [j for j in range(width) if mask[j >> 3] >> (j & 7) & 1]
            plan = plans[mask] = _Plan(p.names, present, dtypes)
        row = flat[i * width:(i + 1) * width]
        if plan.pick:
            counts = plan.counts(row)
            if not (all(map(is_integer, counts)) and min(counts) >= 0
                    and max(counts) < EXACT):
                return None, None
            if min(map(copysign, ones, counts)) < 0:  # a count of -0.0 is the count 0
                return None, None
        if extras and str(i) in extras:
            record = _step(f"frame (binary batch).records[{i}]", streams[index[i]], seq,
                           steps[i], time, {p.names[j]: row[j] for j in range(width)
                                            if mask[j >> 3] >> (j & 7) & 1},
                           dtypes, extras[str(i)])
            records.append(record)
            values.append(None)
            continue
        run, session, rank = streams[index[i]]
        loss, loss_used, grad_norm, grad_norm_post, lr = (None if j is None else row[j]
                                                          for j in plan.top)
        names, get = plan.components
        components = dict(zip(names, get(row), strict=True))
        names, get = plan.scalars
        scalars = dict(zip(names, get(row), strict=True))
        tensors = {}
        for name, dtype, get, headroom in plan.tensors:
            c, na, pi, ni, lo, hi, mean, absmax = get(row)
            tensors[name] = TensorStats(int(c), int(na), int(pi), int(ni), lo, hi, mean, absmax,
                                        dtype, None if headroom is None else row[headroom])
        records.append(Step(run, session, seq, steps[i], rank, time, loss, loss_used, grad_norm,
                            grad_norm_post, lr, components, scalars, tensors))
        names, get = plan.series
        values.append(dict(zip(names, get(row), strict=True)))
    return records, values


def _by_record(value: Any, n: int) -> dict[str, Any]:
    """A header map keyed by record index ("0" … "n-1")."""
    if not isinstance(value, dict):
        raise TypeError("must be an object")
    for key in value:
        if not (isinstance(key, str) and key.isdigit() and key == str(int(key)) and int(key) < n):
            raise ValueError(f"has key {codec._show(key)}, not the index of one of the {n} "
                             "records")
    return value


class _Reader:
    """Reads a frame front to back; running past its end is ``malformed``."""

    def __init__(self, buf: bytes, at: int) -> None:
        self.buf, self.at = buf, at

    def take(self, size: int) -> bytes:
        if size > len(self.buf) - self.at:
            raise ProtocolError(f"binary frame ends at byte {len(self.buf)}, before the "
                                f"{size} bytes it says come at byte {self.at}", code=MALFORMED)
        part = self.buf[self.at:self.at + size]
        self.at += size
        return part

    def unpack(self, fmt: str) -> int:
        (value,) = struct.unpack(fmt, self.take(struct.calcsize(fmt)))
        return int(value)

    def column(self, code: str, n: int) -> array[Any]:
        column = array(code)
        column.frombytes(self.take(n * column.itemsize))
        if not _LITTLE:
            column.byteswap()
        return column

    def left(self) -> int:
        return len(self.buf) - self.at


def _header(raw: bytes) -> dict[str, Any]:
    try:
        header = json.loads(raw.decode("utf-8"), parse_constant=codec._reject_constant)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"binary frame header is not valid JSON: {exc}",
                            code=MALFORMED) from None
    except RecursionError:
        raise ProtocolError("binary frame header is nested too deeply", code=MALFORMED) from None
    if not isinstance(header, dict):
        raise ProtocolError("binary frame header must be a JSON object", code=MALFORMED)
    return header


def _names(header: dict[str, Any]) -> list[str]:
    f = codec._Fields(header, "frame (binary batch)")
    names = f.get("names", _path_list)
    if len(set(names)) != len(names):
        raise f.fail("names", "has a name twice")
    return names


def _path_list(value: Any) -> list[str]:
    if not isinstance(value, list):
        raise TypeError("must be an array")
    if len(value) > MAX_PATHS:
        raise ValueError(f"has {len(value)} names, more than {MAX_PATHS}")
    return [_path(v) for v in value]


def _path(value: Any) -> str:
    text = codec._str(value)
    if text in TOP:
        return text
    kind, _, rest = text.partition("/")
    if kind in ("c", "s") and rest:
        codec._name(rest)
        return text
    name, _, stat = rest.rpartition("/")
    if kind == "t" and stat in STATS and name:
        codec._name(name)
        return text
    raise ValueError(f"has a path that is none of {', '.join(TOP)}, c/…, s/…, t/…/<stat>: "
                     f"{codec._show(text)}")


def _streams(header: dict[str, Any]) -> list[tuple[str, str, int]]:
    f = codec._Fields(header, "frame (binary batch)")

    def triples(value: Any) -> list[tuple[str, str, int]]:
        if not isinstance(value, list) or len(value) > 0xFFFF:
            raise TypeError("must be an array of at most 65,535 [run, session, rank]")
        out = []
        for item in value:
            if not isinstance(item, list) or len(item) != 3:
                raise TypeError("must hold [run, session, rank] triples")
            out.append((codec._name(item[0]), codec._name(item[1]), codec._count(item[2])))
        return out

    return f.get("streams", triples)


def _other(obj: Any, where: str) -> Record:
    if not isinstance(obj, dict):
        raise ProtocolError(f"{where}: must be an object")
    record = codec._decode_object(obj, where)
    if not isinstance(record, (RunStart, Step, RunEnd)):
        raise ProtocolError(f"{where}: must be run_start, step or run_end")
    return record


def _step(where: str, stream: tuple[str, str, int], seq: int, step: int, time: float,
          row: dict[str, float], dtypes: dict[str, str], extra: Any) -> Step:
    def fail(problem: str) -> ProtocolError:
        return ProtocolError(f"{where}: {problem}")

    if seq < 0:
        raise fail(f"field 'seq' must not be negative, got {seq}")
    if not math.isfinite(time):
        raise fail(f"field 'time' must be a finite number of seconds, got {time!r}")
    components: dict[str, float] = {}
    scalars: dict[str, float] = {}
    parts: dict[str, dict[str, float]] = {}
    for path, value in row.items():
        if path[:2] == "c/":
            components[path[2:]] = value
        elif path[:2] == "s/":
            scalars[path[2:]] = value
        elif path[:2] == "t/":
            name, _, stat = path[2:].rpartition("/")
            parts.setdefault(name, {})[stat] = value
    tensors = {name: _stats(fail, name, got, dtypes.get(name, "")) for name, got in parts.items()}
    for label, found in (("components", components), ("scalars", scalars),
                         ("tensors", tensors)):
        if len(found) > codec.MAX_ENTRIES:
            raise fail(f"field {label!r} has {len(found)} entries, more than "
                       f"{codec.MAX_ENTRIES}")
    clip = origin = None
    if extra is not None:
        f = codec._Fields(extra, f"{where} extras") if isinstance(extra, dict) else None
        if f is None:
            raise fail("its extras must be an object")
        clip, origin = f.get("clip", codec._clip, None), f.get("origin", codec._origin, None)
    run, session, rank = stream
    return Step(run=run, session=session, rank=rank, time=time, seq=seq, step=step,
                loss=row.get("loss"), loss_used=row.get("loss_used"),
                grad_norm=row.get("grad_norm"), grad_norm_post=row.get("grad_norm_post"),
                lr=row.get("lr"), components=components, scalars=scalars, tensors=tensors,
                clip=clip, origin=origin)


def _stats(fail: Any, name: str, got: dict[str, float], dtype: str) -> TensorStats:
    missing = [s for s in STATS[:-1] if s not in got]
    if missing:
        raise fail(f"tensor {codec._show(name)} lacks {', '.join(missing)}")
    counts = []
    for c in COUNTS:
        v = got[c]
        if not (math.isfinite(v) and v == int(v) and 0 <= v < EXACT):
            raise fail(f"tensor {codec._show(name)}: {c} must be a whole count, got {v!r}")
        counts.append(int(v))
    return TensorStats(count=counts[0], nan=counts[1], posinf=counts[2], neginf=counts[3],
                       min=got["min"], max=got["max"], mean=got["mean"],
                       absmax=got["absmax"], dtype=dtype, headroom=got.get("headroom"))
