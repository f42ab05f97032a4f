"""Encode messages to JSON text frames and decode them back, validating every field.

A frame is one JSON object: ``{"v": 1, "type": "<kind>", ...fields}``. Records inside a
``batch`` frame are objects of the same shape without ``"v"``. Decoding either returns a fully
valid message or raises ``ProtocolError``; it never returns something half-checked.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import fields
from typing import Any, TypeVar

from trainvitals.protocol.errors import MALFORMED, TOO_LARGE, UNSUPPORTED_VERSION, ProtocolError
from trainvitals.protocol.floats import float_from_wire, float_to_wire
from trainvitals.protocol.messages import (
    Ack,
    Backlog,
    Batch,
    ClipEvent,
    Error,
    Message,
    NonFiniteOrigin,
    Record,
    RunEnd,
    RunStart,
    Step,
    TensorStats,
)

__all__ = ["MAX_ENTRIES", "MAX_NAME_LENGTH", "PROTOCOL_VERSION", "check_name", "decode", "encode",
           "encode_batch"]

PROTOCOL_VERSION = 1
MAX_NAME_LENGTH = 200  # run, metric, component and tensor names
MAX_ENTRIES = 1000  # entries in one components / scalars / tensors map, records in one batch
INT_MIN, INT_MAX = -(2**63), 2**63 - 1  # every integer field fits a signed 64-bit integer
CLIP_ACTIONS = ("zeroed", "passed", "raised")
CLIP_REASONS = ("above_threshold", "nan", "posinf", "neginf")
RUN_STATUSES = ("finished", "crashed")
NONFINITE_KINDS = ("nan", "inf")
NONFINITE_STAGES = ("forward", "backward", "input")
MAX_LABEL_LENGTH = 1000  # module / parameter names, op names and source locations in an origin

T = TypeVar("T")


# --------------------------------------------------------------------------- encode


def encode(message: Message) -> str:
    """One JSON text frame for ``message``; non-finite floats become their string names."""
    obj = {"v": PROTOCOL_VERSION, **_to_wire(message)}
    return json.dumps(obj, separators=(",", ":"), allow_nan=False, ensure_ascii=False)


def encode_batch(encoded_records: Sequence[str], dropped: int = 0,
                 backlog: Backlog | None = None) -> str:
    """A ``batch`` frame around records that ``encode`` already made (the spool keeps them as
    text): they are placed as they are, never decoded and encoded again. Decodes to
    ``Batch(records, dropped, backlog)``; a record's own ``"v"`` key is ignored inside a
    batch."""
    if isinstance(dropped, bool) or not isinstance(dropped, int) or dropped < 0:
        raise ValueError(f"dropped must be a count, got {dropped!r}")
    extra = "" if backlog is None else (
        f',"backlog":{json.dumps(_value_to_wire(backlog), separators=(",", ":"))}')
    return (f'{{"v":{PROTOCOL_VERSION},"type":"batch","dropped":{dropped}{extra},"records":['
            f'{",".join(encoded_records)}]}}')


def _to_wire(message: Message) -> dict[str, Any]:
    if isinstance(message, Batch):
        batch: dict[str, Any] = {"type": "batch", "dropped": message.dropped}
        if message.backlog is not None:
            batch["backlog"] = _value_to_wire(message.backlog)
        batch["records"] = [_to_wire(r) for r in message.records]
        return batch
    obj: dict[str, Any] = {"type": _TYPE_NAMES[type(message)]}
    for f in fields(message):
        value = getattr(message, f.name)
        if value is None:
            continue  # absent means "not reported"
        obj[f.name] = _value_to_wire(value)
    return obj


def _value_to_wire(value: Any) -> Any:
    if isinstance(value, float):
        return float_to_wire(value)
    if isinstance(value, (TensorStats, ClipEvent, NonFiniteOrigin, Backlog)):
        return {f.name: _value_to_wire(getattr(value, f.name))
                for f in fields(value) if getattr(value, f.name) is not None}
    if isinstance(value, Mapping):
        return {str(k): _value_to_wire(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_value_to_wire(v) for v in value]
    return value


# --------------------------------------------------------------------------- decode


def decode(data: str | bytes, *, max_bytes: int | None = None) -> Message:
    """The message in one frame — JSON (version 1), or a binary batch (version 2,
    ``protocol.binary``). Raises ``ProtocolError`` saying what is wrong."""
    if max_bytes is not None:
        _check_size(data, max_bytes)
    if isinstance(data, (bytes, bytearray, memoryview)) and bytes(data[:3]) == b"TVB":
        from trainvitals.protocol.binary import decode_binary  # it builds on this module

        return decode_binary(data)
    try:
        obj = json.loads(data, parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"frame is not valid JSON: {exc}", code=MALFORMED) from None
    except RecursionError:
        raise ProtocolError("frame is not valid JSON: nested too deeply",
                            code=MALFORMED) from None
    if not isinstance(obj, dict):
        raise ProtocolError("frame must be a JSON object", code=MALFORMED)
    version = obj.get("v")
    # type check first: True == 1 and 1.0 == 1 in Python, but neither is version 1
    if type(version) is not int or version != PROTOCOL_VERSION:
        raise ProtocolError(
            f"unsupported protocol version {_show(version)}; this side speaks {PROTOCOL_VERSION}",
            code=UNSUPPORTED_VERSION,
        )
    return _decode_object(obj, "frame")


def _check_size(data: str | bytes, max_bytes: int) -> None:
    """Refuse a frame over ``max_bytes``; a text frame counts as its UTF-8 encoding."""
    size, exact = len(data), True
    if isinstance(data, str) and not data.isascii():
        if size > max_bytes:
            exact = False  # over the limit on characters alone: no need to encode it
        else:
            size = len(data.encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        raise ProtocolError(f"frame of {'' if exact else 'at least '}{size} bytes exceeds the "
                            f"limit of {max_bytes}", code=TOO_LARGE)


def _reject_constant(token: str) -> Any:
    raise ValueError(f"bare {token} is not JSON; send the string {json.dumps(token)}")


def _decode_object(obj: dict[str, Any], where: str) -> Message:
    kind = obj.get("type")
    decoder = _DECODERS.get(kind) if isinstance(kind, str) else None
    if decoder is None:
        raise ProtocolError(f"{where}: unknown message type {_show(kind)}")
    return decoder(_Fields(obj, f"{where} ({kind})"))


class _Fields:
    """Typed, located access to one JSON object's fields; every failure names the field."""

    def __init__(self, obj: Mapping[str, Any], where: str) -> None:
        self.obj, self.where = obj, where

    def fail(self, key: str, problem: str) -> ProtocolError:
        return ProtocolError(f"{self.where}: field {key!r} {problem}")

    def get(self, key: str, check: Callable[[Any], T], default: Any = ..., ) -> T:
        if key not in self.obj:
            if default is ...:
                raise self.fail(key, "is required")
            return default  # type: ignore[no-any-return]
        try:
            return check(self.obj[key])
        except (TypeError, ValueError) as exc:
            raise self.fail(key, str(exc)) from None

    def sub(self, key: str) -> _Fields:
        value = self.obj.get(key)
        if not isinstance(value, dict):
            raise self.fail(key, "must be an object")
        return _Fields(value, f"{self.where}.{key}")


def _show(value: Any) -> str:
    """A short repr for error messages, which go back to the peer in an error frame."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"must be an integer, got {_show(value)}")
    if not INT_MIN <= value <= INT_MAX:
        raise ValueError("must fit in a signed 64-bit integer")
    return value


def _count(value: Any) -> int:
    n = _int(value)
    if n < 0:
        raise ValueError(f"must not be negative, got {n}")
    return n


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"must be true or false, got {_show(value)}")
    return value


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"must be a string, got {type(value).__name__}")
    if not _is_unicode(value):
        raise ValueError("must be valid Unicode text, not contain a lone surrogate")
    return value


def _is_unicode(text: str) -> bool:
    """False for text holding a lone surrogate (``"\\ud800"``), which UTF-8 cannot encode."""
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _name(value: Any) -> str:
    text = _str(value)
    if not text or len(text) > MAX_NAME_LENGTH:
        raise ValueError(f"must be 1 to {MAX_NAME_LENGTH} characters, got {len(text)}")
    if any(ord(c) < 32 or ord(c) == 127 for c in text):
        raise ValueError("must not contain control characters")
    return text


def check_name(name: str) -> str:
    """``name`` if it is a valid run, metric, component or tensor name; else ``ProtocolError``."""
    try:
        return _name(name)
    except (TypeError, ValueError) as exc:
        raise ProtocolError(f"name {_show(name)} {exc}") from None


def _choice(options: tuple[str, ...]) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if value not in options:
            raise ValueError(f"must be one of {', '.join(options)}; got {_show(value)}")
        return str(value)
    return check


def _float_map(value: Any) -> dict[str, float]:
    return _map(value, float_from_wire)


def _map(value: Any, item: Callable[[Any], T]) -> dict[str, T]:
    if not isinstance(value, dict):
        raise TypeError("must be an object")
    if len(value) > MAX_ENTRIES:
        raise ValueError(f"has {len(value)} entries, more than {MAX_ENTRIES}")
    out: dict[str, T] = {}
    for key, raw in value.items():
        try:
            out[_name(key)] = item(raw)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"entry {_show(key)} {exc}") from None
    return out


def _string_map(value: Any) -> dict[str, str]:
    return _map(value, _str)


def _json_object(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise TypeError("must be an object")
    todo: list[Any] = [value]  # iterative: the JSON may nest as deep as the parser allowed
    while todo:
        item = todo.pop()
        if isinstance(item, dict):
            todo.extend(item.keys())
            todo.extend(item.values())
        elif isinstance(item, list):
            todo.extend(item)
        elif isinstance(item, str) and not _is_unicode(item):
            raise ValueError("must not contain a lone surrogate in any string")
    return value


def _optional_float(value: Any) -> float | None:
    return None if value is None else float_from_wire(value)


def _tensor_stats(value: Any) -> TensorStats:
    if not isinstance(value, dict):
        raise TypeError("must be an object")
    f = _Fields(value, "tensor")
    return TensorStats(
        count=f.get("count", _count), nan=f.get("nan", _count),
        posinf=f.get("posinf", _count), neginf=f.get("neginf", _count),
        min=f.get("min", float_from_wire), max=f.get("max", float_from_wire),
        mean=f.get("mean", float_from_wire), absmax=f.get("absmax", float_from_wire),
        dtype=f.get("dtype", _str, ""), headroom=f.get("headroom", _optional_float, None),
    )


def _clip(value: Any) -> ClipEvent:
    if not isinstance(value, dict):
        raise TypeError("must be an object")
    f = _Fields(value, "clip")
    return ClipEvent(
        raw=f.get("raw", float_from_wire), threshold=f.get("threshold", float_from_wire),
        action=f.get("action", _choice(CLIP_ACTIONS)),  # type: ignore[arg-type]
        reason=f.get("reason", _choice(CLIP_REASONS)),  # type: ignore[arg-type]
        components=f.get("components", _float_map, {}),
    )


def _label(value: Any) -> str:
    """Text shown to people (a module path, a source location): 1 to 1000 characters, no
    control characters."""
    text = _str(value)
    if not text or len(text) > MAX_LABEL_LENGTH:
        raise ValueError(f"must be 1 to {MAX_LABEL_LENGTH} characters, got {len(text)}")
    if any(ord(c) < 32 or ord(c) == 127 for c in text):
        raise ValueError("must not contain control characters")
    return text


def _origin(value: Any) -> NonFiniteOrigin:
    if not isinstance(value, dict):
        raise TypeError("must be an object")
    f = _Fields(value, "origin")
    return NonFiniteOrigin(
        step=f.get("step", _int),
        kind=f.get("kind", _choice(NONFINITE_KINDS), "nan"),  # type: ignore[arg-type]
        stage=f.get("stage", _choice(NONFINITE_STAGES), "forward"),  # type: ignore[arg-type]
        **{key: f.get(key, _label, None)
           for key in ("module", "module_type", "param", "op", "source")},
    )


def _time(value: Any) -> float:
    t = float_from_wire(value)
    if not math.isfinite(t):
        raise ValueError(f"must be a finite number of seconds, got {value!r}")
    return t


def _stream(f: _Fields) -> dict[str, Any]:
    return {"run": f.get("run", _name), "session": f.get("session", _name),
            "rank": f.get("rank", _count, 0), "time": f.get("time", _time, 0.0)}


def _run_start(f: _Fields) -> RunStart:
    return RunStart(
        **_stream(f), seq=f.get("seq", _count, 0),
        world_size=f.get("world_size", _count, 1), host=f.get("host", _str, ""),
        pid=f.get("pid", _count, 0), config=f.get("config", _json_object, {}),
        versions=f.get("versions", _string_map, {}),
    )


def _step(f: _Fields) -> Step:
    return Step(
        **_stream(f), seq=f.get("seq", _count), step=f.get("step", _int),
        loss=f.get("loss", float_from_wire, None),
        loss_used=f.get("loss_used", float_from_wire, None),
        grad_norm=f.get("grad_norm", float_from_wire, None),
        grad_norm_post=f.get("grad_norm_post", float_from_wire, None),
        lr=f.get("lr", float_from_wire, None),
        components=f.get("components", _float_map, {}),
        scalars=f.get("scalars", _float_map, {}),
        tensors=f.get("tensors", lambda v: _map(v, _tensor_stats), {}),
        clip=f.get("clip", _clip, None),
        origin=f.get("origin", _origin, None),
    )


def _run_end(f: _Fields) -> RunEnd:
    return RunEnd(
        **_stream(f), seq=f.get("seq", _count),
        status=f.get("status", _choice(RUN_STATUSES), "finished"),  # type: ignore[arg-type]
        reason=f.get("reason", _str, ""), dropped=f.get("dropped", _count, 0),
    )


def _batch(f: _Fields) -> Batch:
    items = f.get("records", _records_list)
    records: list[Record] = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise ProtocolError(f"{f.where}: records[{i}] must be an object")
        record = _decode_object(item, f"{f.where}.records[{i}]")
        if not isinstance(record, (RunStart, Step, RunEnd)):
            raise ProtocolError(f"{f.where}: records[{i}] must be run_start, step or run_end")
        records.append(record)
    return Batch(records=tuple(records), dropped=f.get("dropped", _count, 0),
                 backlog=f.get("backlog", _backlog, None))


def _backlog(value: Any) -> Backlog:
    if not isinstance(value, dict):
        raise TypeError("must be an object")
    f = _Fields(value, "backlog")
    return Backlog(records=f.get("records", _count), bytes=f.get("bytes", _count),
                   max_bytes=f.get("max_bytes", _count),
                   oldest_age=f.get("oldest_age", _age), last_seq=f.get("last_seq", _count))


def _age(value: Any) -> float:
    age = float_from_wire(value)
    if not math.isfinite(age) or age < 0:
        raise ValueError(f"must be a finite number of seconds, not negative, got {value!r}")
    return age


def _records_list(value: Any) -> list[Any]:
    if not isinstance(value, list):
        raise TypeError("must be a list")
    if len(value) > MAX_ENTRIES:
        raise ValueError(f"has {len(value)} records, more than {MAX_ENTRIES}")
    return value


def _ack(f: _Fields) -> Ack:
    return Ack(run=f.get("run", _name), session=f.get("session", _name),
               seq=f.get("seq", _count), rank=f.get("rank", _count, 0))


def _error(f: _Fields) -> Error:
    return Error(code=f.get("code", _str), message=f.get("message", _str),
                 fatal=f.get("fatal", _bool, False))


_DECODERS: dict[str, Callable[[_Fields], Message]] = {
    "run_start": _run_start, "step": _step, "run_end": _run_end,
    "batch": _batch, "ack": _ack, "error": _error,
}
_TYPE_NAMES: dict[type, str] = {
    RunStart: "run_start", Step: "step", RunEnd: "run_end", Ack: "ack", Error: "error",
}
