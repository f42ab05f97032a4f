"""Property-based: random valid records round-trip; random input only ever raises ProtocolError."""

from __future__ import annotations

import contextlib
import json
import math
from dataclasses import fields, is_dataclass
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trainvitals.protocol import (
    MAX_NAME_LENGTH,
    Ack,
    Batch,
    ClipEvent,
    Error,
    Message,
    NonFiniteOrigin,
    ProtocolError,
    RunEnd,
    RunStart,
    Step,
    TensorStats,
    decode,
    encode,
)

# No example database: nothing is written into the repository; keep the suite fast.
FAST = settings(max_examples=60, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow])
CHEAP = settings(FAST, max_examples=200)  # for the inexpensive raw-input fuzzers

# Valid name characters: anything but C0 controls, DEL and surrogates (UTF-8 cannot carry them).
names = st.text(
    alphabet=st.characters(exclude_categories=["Cs"],
                           exclude_characters=[chr(c) for c in range(32)] + ["\x7f"]),
    min_size=1, max_size=MAX_NAME_LENGTH,
)
short_names = st.text(alphabet=st.characters(exclude_categories=["Cs", "Cc"]), min_size=1,
                      max_size=12)
any_float = st.floats(allow_nan=True, allow_infinity=True)
counts = st.integers(min_value=0, max_value=2**63 - 1)
ints64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
times = st.floats(allow_nan=False, allow_infinity=False)
texts = st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=40)
float_maps = st.dictionaries(short_names, any_float, max_size=6)

tensor_stats = st.builds(
    TensorStats, count=counts, nan=counts, posinf=counts, neginf=counts, min=any_float,
    max=any_float, mean=any_float, absmax=any_float, dtype=texts,
    headroom=st.none() | any_float,
)
clips = st.builds(
    ClipEvent, raw=any_float, threshold=any_float,
    action=st.sampled_from(["zeroed", "passed", "raised"]),
    reason=st.sampled_from(["above_threshold", "nan", "posinf", "neginf"]),
    components=float_maps,
)
labels = st.none() | names
origins = st.builds(
    NonFiniteOrigin, step=ints64, kind=st.sampled_from(["nan", "inf"]),
    stage=st.sampled_from(["forward", "backward", "input"]), module=labels,
    module_type=labels, param=labels, op=labels, source=labels,
)
steps = st.builds(
    Step, run=names, session=names, seq=counts, step=ints64, rank=counts, time=times,
    loss=st.none() | any_float, loss_used=st.none() | any_float,
    grad_norm=st.none() | any_float, grad_norm_post=st.none() | any_float,
    lr=st.none() | any_float, components=float_maps, scalars=float_maps,
    tensors=st.dictionaries(short_names, tensor_stats, max_size=3),
    clip=st.none() | clips, origin=st.none() | origins,
)
json_scalars = st.none() | st.booleans() | st.integers() | times | texts
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts, inner, max_size=4),
    max_leaves=20,
)
run_starts = st.builds(
    RunStart, run=names, session=names, rank=counts, world_size=counts, seq=counts,
    time=times, host=texts, pid=counts,
    config=st.dictionaries(texts, json_values, max_size=5),
    versions=st.dictionaries(short_names, texts, max_size=4),
)
run_ends = st.builds(
    RunEnd, run=names, session=names, seq=counts, rank=counts, time=times,
    status=st.sampled_from(["finished", "crashed"]), reason=texts, dropped=counts,
)
records = steps | run_starts | run_ends
messages = (records
            | st.builds(Batch, records=st.lists(records, max_size=3).map(tuple), dropped=counts)
            | st.builds(Ack, run=names, session=names, seq=counts, rank=counts)
            | st.builds(Error, code=texts, message=texts, fatal=st.booleans()))


def same(a: Any, b: Any) -> bool:
    """Deep equality in which NaN equals NaN (and only NaN), never by object identity."""
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or (a == b and
                                                     math.copysign(1, a) == math.copysign(1, b))
    if type(a) is not type(b):
        return False
    if is_dataclass(a):
        return all(same(getattr(a, f.name), getattr(b, f.name)) for f in fields(a))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def strict_json(text: str) -> Any:
    def refuse(token: str) -> Any:
        raise AssertionError(f"bare {token} token on the wire")
    return json.loads(text, parse_constant=refuse)


@FAST
@given(steps)
def test_random_steps_round_trip(step: Step) -> None:
    text = encode(step)
    strict_json(text)
    back = decode(text)
    assert same(back, step), (step, back)
    assert same(decode(text.encode("utf-8")), step)


@FAST
@given(messages)
def test_random_messages_round_trip(message: Message) -> None:
    text = encode(message)
    assert strict_json(text)["v"] == 1
    back = decode(text, max_bytes=len(text.encode("utf-8")))
    assert same(back, message), (message, back)
    assert encode(back) == text


@CHEAP
@given(st.binary(max_size=300))
def test_random_bytes_raise_only_protocol_error(data: bytes) -> None:
    try:
        decode(data)
    except ProtocolError as exc:
        assert exc.code in ("malformed", "invalid", "unsupported_version")


@CHEAP
@given(st.text(max_size=300))
def test_random_text_raises_only_protocol_error(text: str) -> None:
    try:
        decode(text)
    except ProtocolError as exc:
        assert exc.code in ("malformed", "invalid", "unsupported_version")


@CHEAP
@given(st.text(max_size=300), st.integers(min_value=0, max_value=400))
def test_random_text_with_a_size_limit(text: str, limit: int) -> None:
    try:
        decode(text, max_bytes=limit)
    except ProtocolError as exc:
        if len(text.encode("utf-8", "surrogatepass")) > limit:
            assert exc.code == "too_large"


@FAST
@given(json_values)
def test_random_json_raises_only_protocol_error(value: Any) -> None:
    with contextlib.suppress(ProtocolError):
        decode(json.dumps(value))


# Fuzzing the fields of real frames: replace, delete or add one key anywhere in the object tree.

def _paths(obj: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += _paths(v, (*prefix, i))
    return out


def _set(obj: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    head, rest = path[0], path[1:]
    if isinstance(obj, dict):
        return {**obj, head: _set(obj[head], rest, value)}
    copy = list(obj)
    copy[head] = _set(obj[head], rest, value)
    return copy


def _delete(obj: Any, path: tuple[Any, ...]) -> Any:
    head, rest = path[0], path[1:]
    if not rest:
        if isinstance(obj, dict):
            return {k: v for k, v in obj.items() if k != head}
        return [v for i, v in enumerate(obj) if i != head]
    if isinstance(obj, dict):
        return {**obj, head: _delete(obj[head], rest)}
    copy = list(obj)
    copy[head] = _delete(obj[head], rest)
    return copy


@FAST
@given(messages, st.data())
def test_mutated_valid_frames_raise_only_protocol_error(message: Message,
                                                        data: st.DataObject) -> None:
    frame = json.loads(encode(message))
    path = data.draw(st.sampled_from(_paths(frame)[1:] or [("v",)]))
    if data.draw(st.booleans()):
        mutated = _set(frame, path, data.draw(json_values))
    else:
        mutated = _delete(frame, path)
    try:
        result = decode(json.dumps(mutated))
    except ProtocolError as exc:
        assert exc.code in ("invalid", "unsupported_version", "malformed")
        assert str(exc)
    else:
        # whatever is accepted is a complete message that encodes to valid strict JSON again
        strict_json(encode(result))
