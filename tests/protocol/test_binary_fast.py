"""The fast decode of version-2 frames (``decode_binary_values``) against the reference.

``decode_binary`` reads steps by the plan of their presence bits and checks counts with a few
C-level calls per record; anything those checks doubt goes to the value-by-value reference
(``_decode_steps``), which says what is wrong. These tests hold the fast path to it: on
random valid frames, on frames built like the plugin builds them (``rows.Packer`` +
``assemble``), on raw frames of random names, bits and values (non-whole, negative, -0.0,
NaN and huge counts, tensors lacking statistics, negative seqs, non-finite times, stream
indexes out of range) and on flipped bytes, the fast path accepts exactly what the reference
accepts, yields the same records, and each step's series values are ``step_values`` of that
step, in its order. A test also proves the fast path is taken at all.
"""

from __future__ import annotations

import json
import math
import struct
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trainvitals.protocol import Batch, ProtocolError, Step, TensorStats
from trainvitals.protocol import binary as binary_module
from trainvitals.protocol.binary import (
    _decode_steps,
    _parse,
    decode_binary,
    decode_binary_values,
    encode_batch_v2,
)
from trainvitals.protocol.codec import _backlog, _count
from trainvitals.protocol.rows import Packer, assemble
from trainvitals.protocol.series import step_values

from .test_properties import CHEAP, FAST, records, same, steps

RUN, SESSION = "fast run", "0123456789abcdef"


def reference(frame: bytes) -> Batch:
    """What decode_binary returned before the fast path: every record value by value."""
    parts = _parse(frame)
    records = _decode_steps(parts)
    f = parts.fields
    return Batch(records=tuple(records), dropped=f.get("dropped", _count, 0),
                 backlog=f.get("backlog", _backlog, None))


def outcome(decoder: Any, frame: bytes) -> tuple[str, Any]:
    try:
        return "ok", decoder(frame)
    except ProtocolError as exc:
        return f"{exc.code}: {exc}", None


def assert_agrees(frame: bytes) -> bool:
    """The fast decode agrees with the reference on ``frame``; whether it was accepted."""
    want, expected = outcome(reference, frame)
    got, result = outcome(decode_binary_values, frame)
    assert got == want, (got, want)
    if expected is None:
        return False
    batch, values = result
    assert same(batch, expected), (batch, expected)
    assert len(values) == len(batch.records)
    for record, found in zip(batch.records, values, strict=True):
        if found is None:
            continue
        assert isinstance(record, Step)
        derived = step_values(record)
        assert list(found) == list(derived)  # same names, same order
        assert same(found, derived)
    return True


@FAST
@given(st.lists(records, max_size=6))
def test_random_batches_decode_as_the_reference_does(recs: list) -> None:
    assert assert_agrees(encode_batch_v2(recs))


@FAST
@given(st.lists(steps, min_size=1, max_size=6))
def test_frames_the_plugin_assembles_decode_as_the_reference_does(recs: list[Step]) -> None:
    stream = (RUN, SESSION, 0)
    packer = Packer(stream)
    rows = [packer.pack(Step(**{**{f: getattr(r, f) for f in r.__slots__},  # type: ignore[attr-defined]
                                "run": RUN, "session": SESSION, "rank": 0}), seq)
            for seq, r in enumerate(recs)]
    entries = [row for row in rows if row is not None]
    if entries:
        frame, _ = assemble(stream, entries)
        assert assert_agrees(frame)


@FAST
@given(st.lists(records, min_size=1, max_size=3), st.data())
def test_flipped_bytes_decode_as_the_reference_does(recs: list, data: st.DataObject) -> None:
    frame = bytearray(encode_batch_v2(recs))
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(frame) - 1))
        frame[i] = data.draw(st.integers(0, 255))
    assert_agrees(bytes(frame))


# ------------------------------------------------------------------ raw frames

PATHS = ["loss", "loss_used", "grad_norm", "grad_norm_post", "lr", "c/points", "c/normal",
         "s/x", "s/amp/scale", *(f"t/a/{s}" for s in binary_module.STATS),
         *(f"t/b/c/{s}" for s in binary_module.STATS)]
ODD = [0.0, -0.0, 1.0, 3.0, 1.5, -1.0, 2.0**53, 2.0**53 - 1, 1e300, math.nan, math.inf,
       -math.inf, 5e-324]


def raw_frame(names: list[str], present: list[list[bool]], values: list[list[float]],
              seqs: list[int], times: list[float], index: list[int],
              header: dict[str, Any]) -> bytes:
    n, width = len(present), len(names)
    stride = (width + 7) // 8
    bits = bytearray(n * stride)
    for i, row in enumerate(present):
        for j, there in enumerate(row):
            if there:
                bits[i * stride + j // 8] |= 1 << (j % 8)
    head = json.dumps({"names": names, "streams": [[RUN, SESSION, 0], [RUN, SESSION, 1]],
                       **header}).encode()
    flat = [v for row in values for v in row]
    return b"".join([b"TVB\x02", struct.pack("<I", len(head)), head, struct.pack("<I", n),
                     struct.pack(f"<{n}H", *index), struct.pack(f"<{n}q", *seqs),
                     struct.pack(f"<{n}q", *[0] * n), struct.pack(f"<{n}d", *times),
                     bytes(bits), struct.pack(f"<{len(flat)}d", *flat)])


@st.composite
def raw_frames(draw: st.DrawFn) -> bytes:
    names = draw(st.lists(st.sampled_from(PATHS), unique=True, max_size=len(PATHS)))
    # whole tensors most of the time, so that frames get past the "lacks" check
    for t in ("t/a/", "t/b/c/"):
        if draw(st.booleans()):
            names += [t + s for s in binary_module.STATS[:-1] if t + s not in names]
    n = draw(st.integers(0, 5))
    width = len(names)
    value = st.sampled_from(ODD) | st.integers(0, 10).map(float)
    present = [draw(st.lists(st.booleans() | st.just(True), min_size=width, max_size=width))
               for _ in range(n)]
    values = [draw(st.lists(value, min_size=width, max_size=width)) for _ in range(n)]
    seqs = draw(st.lists(st.integers(-2, 5) | st.just(7), min_size=n, max_size=n))
    times = draw(st.lists(st.sampled_from([1.0, 1.7e9, math.nan, math.inf]), min_size=n,
                          max_size=n))
    index = draw(st.lists(st.sampled_from([0, 0, 1, 2]), min_size=n, max_size=n))
    header: dict[str, Any] = {}
    if n and draw(st.booleans()):
        header["dtypes"] = {"a": "float16"}
    if n and draw(st.booleans()):
        header["extras"] = {"0": draw(st.sampled_from([
            {"clip": {"raw": 12.0, "threshold": 10.0, "action": "zeroed",
                      "reason": "above_threshold", "components": {}}},
            {"clip": "no"}, []]))}
    if n > 1 and draw(st.booleans()):
        header["others"] = {"1": draw(st.sampled_from([
            {"type": "run_end", "run": RUN, "session": SESSION, "seq": 9, "status": "finished"},
            {"type": "step", "run": RUN, "session": SESSION, "seq": -1, "step": 0}]))}
    return raw_frame(names, present, values, seqs, times, index, header)


@CHEAP
@given(raw_frames())
def test_raw_frames_of_odd_values_decode_as_the_reference_does(frame: bytes) -> None:
    assert_agrees(frame)


def _tensor_frame(count: float, **header: Any) -> bytes:
    names = [f"t/a/{s}" for s in binary_module.STATS[:-1]]
    return raw_frame(names, [[True] * len(names)], [[count, 0, 0, 0, -1.0, 1.0, 0.5, 1.0]],
                     [1], [1.0], [0], header)


@pytest.mark.parametrize("count", [1.5, -1.0, math.nan, math.inf, 2.0**53, -0.0])
def test_odd_counts_get_the_reference_answer(count: float) -> None:
    accepted = assert_agrees(_tensor_frame(count))
    assert accepted == (count == 0.0)  # -0.0 is the count 0; the others are refused


def test_the_fast_path_is_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    frame = encode_batch_v2([Step(run=RUN, session=SESSION, seq=s, step=s, time=1.0, loss=0.5,
                                  components={"p": math.nan},
                                  tensors={"a": TensorStats(8, 1, 0, 0, -1.0, 1.0, 0.0, 1.0,
                                                            "float32", headroom=87.0)})
                             for s in range(3)])
    expected = reference(frame)

    def refuse(parts: Any) -> Any:
        raise AssertionError("the reference path was taken for a plain frame")

    monkeypatch.setattr(binary_module, "_decode_steps", refuse)
    batch, values = decode_binary_values(frame)
    assert same(batch, expected) and same(decode_binary(frame), expected)
    assert all(v is not None for v in values)
    assert values[0] is not None and list(values[0]) == list(step_values(batch.records[0]))
