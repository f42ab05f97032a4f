"""Every message type survives encode → decode unchanged, and the frame has the documented shape."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from trainvitals.protocol import (
    PROTOCOL_VERSION,
    Ack,
    Batch,
    ClipEvent,
    Error,
    Message,
    RunEnd,
    RunStart,
    Step,
    TensorStats,
    decode,
    encode,
    encode_batch,
)


def _strict(text: str) -> Any:
    """Parse as strict JSON: any bare NaN / Infinity token fails the test."""
    def refuse(token: str) -> Any:
        raise AssertionError(f"encoded frame holds the bare token {token}")
    return json.loads(text, parse_constant=refuse)


def full_run_start() -> RunStart:
    return RunStart(
        run="pi3-hospital", session="5f2a9c1e0b7d4e21", rank=1, world_size=4, seq=0,
        time=1732530000.25, host="gpu-box-07", pid=41237,
        config={"lr": 0.0003, "batch": 32, "model": {"depth": 12, "exp_head": True},
                "tags": ["a", "b"], "note": None},
        versions={"torch": "2.4.1", "python": "3.11.7", "trainvitals": "0.1.0"},
    )


def full_step() -> Step:
    return Step(
        run="pi3-hospital", session="5f2a9c1e0b7d4e21", seq=7, step=1200, rank=1,
        time=1732530012.5, loss=2.75, loss_used=0.0, grad_norm=14.5, grad_norm_post=1.0,
        lr=0.0003,
        components={"depth": 2.5, "normal": 0.25},
        scalars={"tokens_per_s": 51234.5, "gpu_mem_gb": 61.2},
        tensors={
            "depth_raw": TensorStats(count=65536, nan=3, posinf=1, neginf=0, min=-4.5,
                                     max=87.5, mean=1.25, absmax=87.5, dtype="float32",
                                     headroom=1.2228),
            "logits": TensorStats(count=1024, nan=0, posinf=0, neginf=0, min=-1.0, max=1.0,
                                  mean=0.0, absmax=1.0, dtype="bfloat16"),
        },
        clip=ClipEvent(raw=2.75, threshold=2.0, action="zeroed", reason="above_threshold",
                       components={"depth": 2.5, "normal": 0.25}),
    )


def full_run_end() -> RunEnd:
    return RunEnd(run="pi3-hospital", session="5f2a9c1e0b7d4e21", seq=8, rank=1,
                  time=1732530099.0, status="crashed", reason="FloatingPointError: loss is nan",
                  dropped=12)


ALL_MESSAGES: dict[str, Message] = {
    "run_start": full_run_start(),
    "step": full_step(),
    "run_end": full_run_end(),
    "batch": Batch(records=(full_run_start(), full_step(), full_run_end()), dropped=5),
    "ack": Ack(run="pi3-hospital", session="5f2a9c1e0b7d4e21", seq=8, rank=1),
    "error": Error(code="invalid", message="frame (step): field 'seq' is required", fatal=True),
}


@pytest.mark.parametrize("kind", sorted(ALL_MESSAGES))
def test_every_message_type_round_trips(kind: str) -> None:
    message = ALL_MESSAGES[kind]
    text = encode(message)
    back = decode(text)
    assert type(back) is type(message)
    assert back == message
    assert encode(back) == text  # and the encoding is deterministic


@pytest.mark.parametrize("kind", sorted(ALL_MESSAGES))
def test_frame_is_versioned_typed_compact_json_object(kind: str) -> None:
    text = encode(ALL_MESSAGES[kind])
    obj = _strict(text)
    assert isinstance(obj, dict)
    assert obj["v"] == PROTOCOL_VERSION == 1
    assert obj["type"] == kind
    assert ", " not in text and '": ' not in text  # compact separators


@pytest.mark.parametrize("kind", sorted(ALL_MESSAGES))
def test_decode_accepts_utf8_bytes_too(kind: str) -> None:
    message = ALL_MESSAGES[kind]
    assert decode(encode(message).encode("utf-8")) == message


def test_batch_records_carry_no_version_and_keep_order() -> None:
    obj = _strict(encode(ALL_MESSAGES["batch"]))
    assert [r["type"] for r in obj["records"]] == ["run_start", "step", "run_end"]
    assert all("v" not in r for r in obj["records"])
    assert obj["dropped"] == 5


def test_a_batch_of_already_encoded_records_decodes_like_an_encoded_batch() -> None:
    records = (full_run_start(), full_step(), full_run_end())
    frame = encode_batch([encode(r) for r in records], dropped=7)
    assert decode(frame) == Batch(records=records, dropped=7)
    assert _strict(frame)["v"] == PROTOCOL_VERSION
    assert decode(encode_batch([])) == Batch(records=(), dropped=0)


@pytest.mark.parametrize("dropped", [-1, True, 1.5])
def test_a_batch_frame_refuses_a_dropped_count_that_is_no_count(dropped: Any) -> None:
    with pytest.raises(ValueError, match="dropped must be a count"):
        encode_batch([], dropped=dropped)


def test_empty_batch_round_trips() -> None:
    assert decode(encode(Batch(records=()))) == Batch(records=(), dropped=0)


def test_minimal_messages_take_documented_defaults() -> None:
    start = decode('{"v":1,"type":"run_start","run":"r","session":"s"}')
    assert start == RunStart(run="r", session="s", rank=0, world_size=1, seq=0, time=0.0,
                             host="", pid=0, config={}, versions={})
    step = decode('{"v":1,"type":"step","run":"r","session":"s","seq":1,"step":0}')
    assert step == Step(run="r", session="s", seq=1, step=0)
    assert isinstance(step, Step)
    assert (step.loss, step.loss_used, step.grad_norm, step.grad_norm_post, step.lr,
            step.clip) == (None, None, None, None, None, None)
    end = decode('{"v":1,"type":"run_end","run":"r","session":"s","seq":2}')
    assert end == RunEnd(run="r", session="s", seq=2, status="finished", reason="", dropped=0)
    batch = decode('{"v":1,"type":"batch","records":[]}')
    assert batch == Batch(records=(), dropped=0)
    ack = decode('{"v":1,"type":"ack","run":"r","session":"s","seq":3}')
    assert ack == Ack(run="r", session="s", seq=3, rank=0)
    error = decode('{"v":1,"type":"error","code":"invalid","message":"m"}')
    assert error == Error(code="invalid", message="m", fatal=False)


def test_unreported_values_are_absent_not_null() -> None:
    obj = _strict(encode(Step(run="r", session="s", seq=1, step=0, loss=1.5)))
    for key in ("loss_used", "grad_norm", "grad_norm_post", "lr", "clip"):
        assert key not in obj
    assert obj["loss"] == 1.5
    tensor = TensorStats(count=1, nan=0, posinf=0, neginf=0, min=0.0, max=0.0, mean=0.0,
                         absmax=0.0)
    obj = _strict(encode(Step(run="r", session="s", seq=1, step=0, tensors={"t": tensor})))
    assert "headroom" not in obj["tensors"]["t"]


def test_explicit_null_headroom_reads_as_absent() -> None:
    text = ('{"v":1,"type":"step","run":"r","session":"s","seq":1,"step":0,"tensors":{"t":'
            '{"count":1,"nan":0,"posinf":0,"neginf":0,"min":0,"max":0,"mean":0,"absmax":0,'
            '"headroom":null}}}')
    step = decode(text)
    assert isinstance(step, Step)
    assert step.tensors["t"].headroom is None


def test_zero_is_reported_and_kept_distinct_from_absent() -> None:
    step = decode(encode(Step(run="r", session="s", seq=1, step=0, loss=0.0, lr=0.0)))
    assert isinstance(step, Step)
    assert step.loss == 0.0 and step.lr == 0.0 and step.grad_norm is None


def test_integers_in_float_fields_read_back_as_floats() -> None:
    step = decode('{"v":1,"type":"step","run":"r","session":"s","seq":1,"step":0,"loss":3,'
                  '"scalars":{"n":-2}}')
    assert isinstance(step, Step)
    assert type(step.loss) is float and step.loss == 3.0
    assert type(step.scalars["n"]) is float and step.scalars["n"] == -2.0


def test_number_beyond_float_range_reads_as_infinity() -> None:
    # Like JSON.parse and float(): 1e400 and a 400-digit integer are both past the float range.
    for literal, expected in (("1e400", math.inf), ("-1e400", -math.inf),
                              ("1" + "0" * 400, math.inf), ("-1" + "0" * 400, -math.inf)):
        step = decode('{"v":1,"type":"step","run":"r","session":"s","seq":1,"step":0,'
                      f'"loss":{literal}}}')
        assert isinstance(step, Step)
        assert step.loss == expected, literal


def test_unknown_fields_are_ignored() -> None:
    step = decode('{"v":1,"type":"step","run":"r","session":"s","seq":1,"step":0,'
                  '"future_field":{"x":[1,2]},"loss":1.0}')
    assert step == Step(run="r", session="s", seq=1, step=0, loss=1.0)


def test_non_ascii_text_is_written_as_is() -> None:
    step = Step(run="運転-ü", session="s", seq=1, step=0, scalars={"λ": 0.5})
    text = encode(step)
    assert "運転-ü" in text and "λ" in text  # not \\u escapes
    assert decode(text) == step
    assert decode(text.encode("utf-8")) == step


def test_config_round_trips_as_arbitrary_json() -> None:
    config = {"nested": {"deep": [1, 2.5, "x", None, True, {"k": []}]}, "empty": {}}
    start = decode(encode(RunStart(run="r", session="s", config=config)))
    assert isinstance(start, RunStart)
    assert start.config == config


def test_clip_event_every_action_and_reason_round_trips() -> None:
    for action in ("zeroed", "passed", "raised"):
        for reason in ("above_threshold", "nan", "posinf", "neginf"):
            clip = ClipEvent(raw=3.0, threshold=2.0, action=action, reason=reason)
            step = Step(run="r", session="s", seq=1, step=0, clip=clip)
            assert decode(encode(step)) == step


def test_run_end_both_statuses_round_trip() -> None:
    for status in ("finished", "crashed"):
        end = RunEnd(run="r", session="s", seq=1, status=status)
        assert decode(encode(end)) == end


def test_negative_step_numbers_are_allowed() -> None:
    step = Step(run="r", session="s", seq=1, step=-5)
    assert decode(encode(step)) == step


def test_sixty_four_bit_integers_round_trip() -> None:
    big = 2**63 - 1
    step = Step(run="r", session="s", seq=big, step=-(2**63), rank=big)
    assert decode(encode(step)) == step


def test_tensor_nonfinite_property_sums_counts() -> None:
    stats = TensorStats(count=10, nan=1, posinf=2, neginf=3, min=0.0, max=0.0, mean=0.0,
                        absmax=0.0)
    assert stats.nonfinite == 6
