"""Protocol version 2: binary, columnar batch frames, decoded by the same ``decode`` as JSON.

Round trips of random records (NaN and ±Inf as themselves, clip events, origins, run starts
and ends among steps), random and mangled bytes only ever raise ``ProtocolError``, an unknown
binary version gets ``unsupported_version``, and a v1 JSON frame still decodes.
"""

from __future__ import annotations

import math
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trainvitals.protocol import Batch, ProtocolError, RunEnd, Step, TensorStats, decode, encode
from trainvitals.protocol.binary import MAGIC, encode_batch_v2, is_binary
from trainvitals.protocol.codec import encode_batch
from trainvitals.protocol.errors import MALFORMED, UNSUPPORTED_VERSION
from trainvitals.protocol.messages import Backlog

from .test_properties import CHEAP, FAST, counts, records, same, steps


def step(seq: int, **fields: object) -> Step:
    base: dict[str, object] = {
        "run": "pi3/overflow run", "session": "0123456789abcdef", "seq": seq, "step": 10 + seq,
        "time": 1.7e9 + seq, "loss": math.nan if seq == 2 else 0.5,
        "grad_norm": math.inf if seq == 2 else 1.0, "lr": 1e-3,
        "components": {"points": 0.25, "normal": -math.inf if seq == 2 else 0.25},
        "scalars": {"scalar/x": float(seq)},
        "tensors": {"depth/raw": TensorStats(64, seq, 0, 0, -1.0, 90.0, 3.0, 90.0, "float16",
                                             headroom=-78.9)}}
    base.update(fields)
    return Step(**base)  # type: ignore[arg-type]


@FAST
@given(st.lists(records, max_size=6), counts)
def test_random_batches_round_trip_through_the_binary_frame(recs: list, dropped: int) -> None:
    frame = encode_batch_v2(recs, dropped=dropped)
    assert is_binary(frame) and frame[:4] == MAGIC + bytes([2])
    back = decode(frame, max_bytes=len(frame))
    assert same(back, Batch(records=tuple(recs), dropped=dropped)), (recs, back)


@FAST
@given(st.lists(steps, min_size=1, max_size=4))
def test_binary_and_json_batches_decode_to_the_same_records(recs: list[Step]) -> None:
    as_json = decode(encode_batch([encode(r) for r in recs]))
    assert same(decode(encode_batch_v2(recs)), as_json)


def test_non_finite_values_clip_origin_and_backlog_survive() -> None:
    recs = [step(1), step(2), RunEnd(run="pi3/overflow run", session="0123456789abcdef", seq=3,
                                     status="crashed", reason="NaN")]
    backlog = Backlog(records=3, bytes=900, max_bytes=1 << 20, oldest_age=1.5, last_seq=3)
    back = decode(encode_batch_v2(recs, dropped=4, backlog=backlog))
    assert isinstance(back, Batch) and back.dropped == 4 and back.backlog == backlog
    bad = back.records[1]
    assert isinstance(bad, Step)
    assert math.isnan(bad.loss or 0.0) and bad.grad_norm == math.inf
    assert bad.components["normal"] == -math.inf
    assert bad.tensors["depth/raw"].dtype == "float16" and bad.tensors["depth/raw"].nan == 2
    assert same(back.records, tuple(recs))


def test_a_binary_frame_is_smaller_than_the_json_batch_of_many_similar_steps() -> None:
    recs = [step(i) for i in range(64)]
    assert len(encode_batch_v2(recs)) < len(encode_batch([encode(r) for r in recs]).encode())


def test_an_unknown_binary_version_is_refused_clearly() -> None:
    frame = bytearray(encode_batch_v2([step(1)]))
    frame[3] = 3
    with pytest.raises(ProtocolError, match="unsupported binary protocol version 3") as err:
        decode(bytes(frame))
    assert err.value.code == UNSUPPORTED_VERSION


def test_json_frames_are_still_version_1() -> None:
    text = encode(step(1))
    assert text.startswith('{"v":1,') and same(decode(text), step(1))
    assert same(decode(text.encode()), step(1))  # JSON bytes are not mistaken for binary


@pytest.mark.parametrize(("mangle", "message"), [
    (lambda f: f[:5], "shorter than its 8-byte header"),
    (lambda f: f[:-3], "ends at byte"),
    (lambda f: f + b"\0", "bytes after its last column"),
    (lambda f: f[:4] + struct.pack("<I", 2) + b"{}" + f[8:], "'names' is required"),
])
def test_mangled_frames_say_what_is_wrong(mangle, message: str) -> None:
    frame = encode_batch_v2([step(1), step(2)])
    with pytest.raises(ProtocolError, match=message):
        decode(mangle(frame))


def test_values_the_json_decoder_refuses_are_refused_here_too() -> None:
    good = encode_batch_v2([step(1)])
    head_len = struct.unpack_from("<I", good, 4)[0]
    header = good[8:8 + head_len].decode()
    for old, new, why in [('"s/scalar/x"', '"s/bad\\u0000name"', "control characters"),
                          ('"t/depth/raw/count"', '"t/depth/raw/sum"', "none of"),
                          ('"0123456789abcdef",0]', '"0123456789abcdef",-1]', "negative")]:
        changed = header.replace(old, new).encode()
        frame = good[:4] + struct.pack("<I", len(changed)) + changed + good[8 + head_len:]
        with pytest.raises(ProtocolError, match=why):
            decode(frame)


def test_a_count_that_is_not_whole_is_refused() -> None:
    frame = bytearray(encode_batch_v2([step(1)]))
    # the last 1.0 among the values is the tensor's "nan" count (the last column that holds 1)
    one = struct.pack("<d", 1.0)
    at = frame.rfind(one)
    frame[at:at + 8] = struct.pack("<d", 1.5)
    with pytest.raises(ProtocolError, match=r"nan must be a whole count, got 1\.5"):
        decode(bytes(frame))


@CHEAP
@given(st.binary(max_size=200))
def test_random_bytes_after_the_magic_only_raise_protocol_errors(tail: bytes) -> None:
    for frame in (MAGIC + tail, MAGIC + b"\x02" + tail):
        try:
            decode(frame)
        except ProtocolError as exc:
            assert exc.code in (MALFORMED, UNSUPPORTED_VERSION, "invalid", "too_large")


@FAST
@given(st.lists(records, min_size=1, max_size=3), st.data())
def test_flipped_bytes_of_a_real_frame_only_raise_protocol_errors(recs: list,
                                                                  data: st.DataObject) -> None:
    frame = bytearray(encode_batch_v2(recs))
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(frame) - 1))
        frame[i] = data.draw(st.integers(0, 255))
    try:
        out = decode(bytes(frame))
    except ProtocolError:
        return  # refused with a clear error: fine
    assert isinstance(out, Batch) and len(out.records) <= len(recs) + 1  # or a whole batch


def test_wide_and_varied_steps_fit_a_frame_the_decoder_takes() -> None:
    """Steps that name more paths together than one frame may hold go as version-1 objects in
    it; a single step as wide as version 1 allows still packs."""
    varied = [step(i, scalars={f"s{i}_{k}": float(k) for k in range(100)}) for i in range(50)]
    wide = step(99, tensors={f"t{k}": TensorStats(8, 0, 0, 0, 0.0, 1.0, 0.5, 1.0, "float32")
                             for k in range(500)})
    for recs in (varied, [wide], [*varied, wide]):
        back = decode(encode_batch_v2(recs))
        assert same(back, Batch(records=tuple(recs))), len(recs)
