"""Every bad frame raises ProtocolError with the right code and a message naming what is wrong."""

from __future__ import annotations

import json
from typing import Any

import pytest

from trainvitals.protocol import (
    MAX_ENTRIES,
    MAX_NAME_LENGTH,
    Batch,
    ClipEvent,
    ProtocolError,
    RunStart,
    Step,
    TensorStats,
    check_name,
    decode,
    encode,
)


def assert_bad(frame: str | bytes | dict[str, Any], code: str, *words: str,
            max_bytes: int | None = None) -> ProtocolError:
    """Decode ``frame`` (a dict is dumped first); assert it fails with ``code`` naming ``words``."""
    data = json.dumps(frame) if isinstance(frame, dict) else frame
    with pytest.raises(ProtocolError) as caught:
        decode(data, max_bytes=max_bytes)
    error = caught.value
    assert error.code == code, str(error)
    for word in words:
        assert word in str(error), (word, str(error))
    assert isinstance(error, ValueError)  # callers may catch it as a ValueError too
    return error


def _tensor(**overrides: Any) -> dict[str, Any]:
    return {"count": 4, "nan": 0, "posinf": 0, "neginf": 0, "min": 0.0, "max": 1.0,
            "mean": 0.5, "absmax": 1.0, **overrides}


def _clip(**overrides: Any) -> dict[str, Any]:
    return {"raw": 3.0, "threshold": 2.0, "action": "zeroed", "reason": "above_threshold",
            **overrides}


VALID: dict[str, dict[str, Any]] = {
    "run_start": {"v": 1, "type": "run_start", "run": "r", "session": "s"},
    "step": {"v": 1, "type": "step", "run": "r", "session": "s", "seq": 1, "step": 0,
             "tensors": {"w": _tensor()}, "clip": _clip()},
    "run_end": {"v": 1, "type": "run_end", "run": "r", "session": "s", "seq": 2},
    "batch": {"v": 1, "type": "batch", "records": []},
    "ack": {"v": 1, "type": "ack", "run": "r", "session": "s", "seq": 2},
    "error": {"v": 1, "type": "error", "code": "invalid", "message": "m"},
}


def _frame(kind: str, **fields: Any) -> dict[str, Any]:
    return {**VALID[kind], **fields}


def _step_with(**fields: Any) -> dict[str, Any]:
    return _frame("step", **fields)


def test_valid_templates_decode() -> None:  # so every failure below is down to the change
    for kind, frame in VALID.items():
        message = decode(json.dumps(frame))
        assert json.loads(encode(message))["type"] == kind == frame["type"]


# --------------------------------------------------------------------------- malformed


@pytest.mark.parametrize("data", [
    "", " ", "not json", "{", "{'v': 1}", '{"v":1,}', "nul", b"\xff\xfe\x00", b"\x80",
    '{"v":1 "type":"ack"}', "\ufeff{}",
], ids=repr)
def test_not_json_is_malformed(data: str | bytes) -> None:
    assert_bad(data, "malformed", "not valid JSON")


@pytest.mark.parametrize("data", ["[]", '[{"v":1}]', "1", '"step"', "null", "true", "1.5"])
def test_json_that_is_not_an_object_is_malformed(data: str) -> None:
    assert_bad(data, "malformed", "JSON object")


def _long_valid_frame() -> str:
    step = Step(
        run="pi3-hospital-运行", session="abc", seq=9, step=90, time=1.5, loss=float("nan"),
        loss_used=0.0, grad_norm=float("inf"), lr=1e-4, components={"depth": 1.0},
        scalars={"s": -2.5},
        tensors={"w": TensorStats(count=3, nan=1, posinf=0, neginf=0, min=-1.0, max=1.0,
                                  mean=0.0, absmax=1.0, dtype="float32", headroom=3.0)},
        clip=ClipEvent(raw=float("nan"), threshold=2.0, action="passed", reason="nan"),
    )
    return encode(Batch(records=(RunStart(run="r", session="s", config={"k": [1, {}]}), step)))


def test_every_truncation_of_a_valid_frame_is_malformed() -> None:
    text = _long_valid_frame()
    decode(text)  # the whole frame is fine
    for cut in range(len(text)):
        with pytest.raises(ProtocolError) as caught:
            decode(text[:cut])
        assert caught.value.code == "malformed", (cut, text[:cut])


def test_every_truncation_of_the_utf8_bytes_is_malformed() -> None:
    data = _long_valid_frame().encode("utf-8")
    assert len(data) > len(data.decode("utf-8"))  # some cuts land inside a multi-byte char
    for cut in range(len(data)):
        with pytest.raises(ProtocolError) as caught:
            decode(data[:cut])
        assert caught.value.code == "malformed", cut


def test_deep_nesting_is_malformed_not_a_crash() -> None:
    assert_bad("[" * 100_000 + "]" * 100_000, "malformed", "nested too deeply")
    deep = '{"a":' * 50_000 + "1" + "}" * 50_000
    assert_bad('{"v":1,"type":"run_start","run":"r","session":"s","config":' + deep + "}",
            "malformed")


def test_integer_with_too_many_digits_is_malformed() -> None:
    assert_bad('{"v":1,"type":"step","run":"r","session":"s","seq":1,"step":' + "9" * 5000 + "}",
            "malformed")


# --------------------------------------------------------------------------- version


@pytest.mark.parametrize("version", [..., 2, 0, -1, "1", True, 1.0, None, [1], {"v": 1}],
                         ids=repr)
def test_unknown_version(version: Any) -> None:
    frame = {k: v for k, v in VALID["ack"].items() if k != "v"}
    if version is not ...:
        frame["v"] = version
    error = assert_bad(frame, "unsupported_version", "version")
    assert "speaks 1" in str(error)


def test_version_is_checked_before_anything_else() -> None:
    assert_bad({"v": 2, "type": "from-the-future", "payload": [1]}, "unsupported_version")
    assert_bad({"v": 2}, "unsupported_version")


# --------------------------------------------------------------------------- type


@pytest.mark.parametrize("kind", [..., "nope", "Step", "STEP", "", 5, None, ["step"], "records"],
                         ids=repr)
def test_unknown_or_missing_type_is_invalid(kind: Any) -> None:
    frame: dict[str, Any] = {"v": 1, "run": "r", "session": "s", "seq": 1, "step": 0}
    if kind is not ...:
        frame["type"] = kind
    assert_bad(frame, "invalid", "unknown message type")


def test_unknown_record_type_inside_batch_names_its_index() -> None:
    frame = _frame("batch", records=[VALID["run_end"], {"type": "bogus"}])
    assert_bad(frame, "invalid", "records[1]", "unknown message type", "'bogus'")


@pytest.mark.parametrize("kind", ["ack", "error", "batch"])
def test_batch_holds_only_records(kind: str) -> None:
    inner = {k: v for k, v in VALID[kind].items() if k != "v"}
    assert_bad(_frame("batch", records=[inner]), "invalid", "records[0]",
            "must be run_start, step or run_end")


def test_batch_record_must_be_an_object() -> None:
    assert_bad(_frame("batch", records=[VALID["run_end"], 7]), "invalid", "records[1]",
            "must be an object")


def test_one_bad_record_fails_the_whole_batch_with_its_field() -> None:
    good = {k: v for k, v in VALID["step"].items() if k != "v"}
    bad = {**good, "seq": -1}
    assert_bad(_frame("batch", records=[good, good, bad]), "invalid", "records[2]", "'seq'",
            "negative")


# --------------------------------------------------------------------------- missing fields

REQUIRED = [
    ("run_start", "run"), ("run_start", "session"),
    ("step", "run"), ("step", "session"), ("step", "seq"), ("step", "step"),
    ("run_end", "run"), ("run_end", "session"), ("run_end", "seq"),
    ("batch", "records"),
    ("ack", "run"), ("ack", "session"), ("ack", "seq"),
    ("error", "code"), ("error", "message"),
]


@pytest.mark.parametrize(("kind", "field"), REQUIRED)
def test_missing_required_field(kind: str, field: str) -> None:
    frame = {k: v for k, v in VALID[kind].items() if k != field}
    assert_bad(frame, "invalid", f"'{field}'", "is required", f"({kind})")


@pytest.mark.parametrize("field", ["count", "nan", "posinf", "neginf", "min", "max", "mean",
                                   "absmax"])
def test_missing_tensor_stat(field: str) -> None:
    tensor = {k: v for k, v in _tensor().items() if k != field}
    assert_bad(_step_with(tensors={"w": tensor}), "invalid", "'tensors'", "'w'", f"'{field}'",
            "is required")


@pytest.mark.parametrize("field", ["raw", "threshold", "action", "reason"])
def test_missing_clip_field(field: str) -> None:
    clip = {k: v for k, v in _clip().items() if k != field}
    assert_bad(_step_with(clip=clip), "invalid", "'clip'", f"'{field}'", "is required")


# --------------------------------------------------------------------------- wrong types

WRONG = [
    # integers: no booleans, no floats, no strings, no negatives for counts
    ("step", "seq", True), ("step", "seq", 1.0), ("step", "seq", 1.5), ("step", "seq", "1"),
    ("step", "seq", -1), ("step", "seq", None), ("step", "step", False),
    ("step", "step", 2.0), ("step", "step", "0"), ("step", "rank", -1), ("step", "rank", True),
    ("run_start", "seq", -1), ("run_start", "world_size", -1), ("run_start", "world_size", True),
    ("run_start", "pid", -3), ("run_start", "pid", "12"), ("run_end", "dropped", -1),
    ("run_end", "dropped", 0.5), ("batch", "dropped", -1), ("batch", "dropped", True),
    ("ack", "seq", -1), ("ack", "rank", 1.0),
    # 64-bit range
    ("step", "seq", 2**63), ("step", "step", -(2**63) - 1), ("step", "rank", 2**64),
    ("run_end", "dropped", 10**30),
    # numbers: a number or one of the three names, nothing else
    ("step", "loss", True), ("step", "loss", "1.5"), ("step", "loss", "nan"),
    ("step", "loss", "inf"), ("step", "loss", "+Infinity"), ("step", "loss", None),
    ("step", "loss", [1.0]), ("step", "loss_used", {}), ("step", "grad_norm", "NAN"),
    ("step", "grad_norm_post", False), ("step", "lr", ""), ("step", "time", "now"),
    # time must be a finite number of seconds
    ("step", "time", "NaN"), ("step", "time", "Infinity"), ("run_start", "time", "-Infinity"),
    ("run_end", "time", "-Infinity"),
    # strings
    ("run_start", "host", 5), ("run_start", "host", None), ("run_end", "reason", ["x"]),
    ("error", "code", 1), ("error", "message", None), ("error", "fatal", 1),
    ("error", "fatal", "true"),
    # choices
    ("run_end", "status", "ok"), ("run_end", "status", "Finished"), ("run_end", "status", 1),
    # containers
    ("step", "components", [1.0]), ("step", "components", "x"), ("step", "scalars", 1),
    ("step", "tensors", []), ("step", "clip", "zeroed"), ("step", "clip", []),
    ("run_start", "config", []), ("run_start", "config", "{}"), ("run_start", "config", None),
    ("run_start", "versions", ["torch"]), ("batch", "records", {}), ("batch", "records", "x"),
]


@pytest.mark.parametrize(("kind", "field", "value"), WRONG, ids=repr)
def test_wrong_type_or_range_is_invalid_and_named(kind: str, field: str, value: Any) -> None:
    assert_bad(_frame(kind, **{field: value}), "invalid", f"'{field}'")


@pytest.mark.parametrize(("field", "value", "words"), [
    ("components", {"depth": "x"}, ["'depth'"]),
    ("components", {"depth": True}, ["'depth'", "boolean"]),
    ("scalars", {"acc": None}, ["'acc'"]),
    ("scalars", {"acc": "Inf"}, ["'acc'"]),
    ("tensors", {"w": 1.0}, ["'w'", "must be an object"]),
    ("tensors", {"w": _tensor(count=-1)}, ["'w'", "'count'", "negative"]),
    ("tensors", {"w": _tensor(nan=True)}, ["'w'", "'nan'"]),
    ("tensors", {"w": _tensor(posinf=1.0)}, ["'w'", "'posinf'"]),
    ("tensors", {"w": _tensor(neginf="0")}, ["'w'", "'neginf'"]),
    ("tensors", {"w": _tensor(min="low")}, ["'w'", "'min'"]),
    ("tensors", {"w": _tensor(max=None)}, ["'w'", "'max'"]),
    ("tensors", {"w": _tensor(mean=[0])}, ["'w'", "'mean'"]),
    ("tensors", {"w": _tensor(absmax=True)}, ["'w'", "'absmax'"]),
    ("tensors", {"w": _tensor(headroom="inf")}, ["'w'", "'headroom'"]),
    ("tensors", {"w": _tensor(dtype=32)}, ["'w'", "'dtype'"]),
    ("clip", _clip(raw="x"), ["'raw'"]),
    ("clip", _clip(threshold=None), ["'threshold'"]),
    ("clip", _clip(action="clipped"), ["'action'", "zeroed, passed, raised"]),
    ("clip", _clip(reason="big"), ["'reason'", "above_threshold"]),
    ("clip", _clip(components={"a": "b"}), ["'components'", "'a'"]),
])
def test_nested_wrong_value_names_the_path(field: str, value: Any, words: list[str]) -> None:
    assert_bad(_step_with(**{field: value}), "invalid", f"'{field}'", *words)


def test_time_beyond_float_range_is_invalid() -> None:
    assert_bad('{"v":1,"type":"run_end","run":"r","session":"s","seq":2,"time":1e400}', "invalid",
            "'time'", "finite")


def test_versions_values_must_be_strings() -> None:
    assert_bad(_frame("run_start", versions={"torch": 2.4}), "invalid", "'versions'", "'torch'")


# --------------------------------------------------------------------------- names

BAD_NAMES = [
    pytest.param("", id="empty"),
    pytest.param("x" * (MAX_NAME_LENGTH + 1), id="too-long"),
    pytest.param("a\nb", id="newline"),
    pytest.param("a\tb", id="tab"),
    pytest.param("\x00", id="nul"),
    pytest.param("bell\x07", id="bell"),
    pytest.param("del\x7f", id="del"),
    pytest.param("\x1b[31mred", id="escape"),
    pytest.param("lone\ud800", id="lone-surrogate"),
]


@pytest.mark.parametrize("name", BAD_NAMES)
@pytest.mark.parametrize("field", ["run", "session"])
def test_bad_stream_names(field: str, name: str) -> None:
    for kind in ("run_start", "step", "run_end", "ack"):
        assert_bad(_frame(kind, **{field: name}), "invalid", f"'{field}'", f"({kind})")


@pytest.mark.parametrize("name", BAD_NAMES)
@pytest.mark.parametrize("field", ["components", "scalars", "tensors"])
def test_bad_map_keys(field: str, name: str) -> None:
    value: Any = _tensor() if field == "tensors" else 1.0
    assert_bad(_step_with(**{field: {"ok": value, name: value}}), "invalid", f"'{field}'", "entry")


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_clip_component_and_version_keys(name: str) -> None:
    assert_bad(_step_with(clip=_clip(components={name: 1.0})), "invalid", "'clip'", "'components'")
    assert_bad(_frame("run_start", versions={name: "1"}), "invalid", "'versions'")


def test_name_length_limit_is_inclusive() -> None:
    longest = "n" * MAX_NAME_LENGTH
    step = decode(json.dumps(_step_with(run=longest, scalars={longest: 1.0})))
    assert isinstance(step, Step)
    assert step.run == longest and longest in step.scalars
    error = assert_bad(_step_with(run=longest + "n"), "invalid", "'run'")
    assert f"1 to {MAX_NAME_LENGTH} characters" in str(error)
    assert str(MAX_NAME_LENGTH + 1) in str(error)


def test_names_may_hold_slashes_spaces_and_unicode() -> None:
    for name in ("loss/depth", "a b", "ünïcødé", "名前", "emoji 🔥", "x" * MAX_NAME_LENGTH,
                 "\u0085next-line-c1"):
        assert check_name(name) == name
        step = decode(json.dumps(_step_with(run=name, components={name: 1.0})))
        assert isinstance(step, Step)
        assert step.run == name and step.components == {name: 1.0}


def test_lone_surrogates_are_refused_in_any_string() -> None:
    # json.loads turns the escape "\ud800" into a str UTF-8 cannot encode; storing or echoing
    # it would fail later, so decode refuses it up front.
    assert_bad(_frame("run_start", host="\ud800"), "invalid", "'host'", "surrogate")
    assert_bad(_frame("run_end", reason="x\udfff"), "invalid", "'reason'", "surrogate")
    assert_bad(_frame("run_start", config={"a": ["ok", {"b": "\udc00"}]}), "invalid", "'config'",
            "surrogate")
    assert_bad(_frame("run_start", config={"\ud800": 1}), "invalid", "'config'", "surrogate")
    assert_bad(_step_with(tensors={"w": _tensor(dtype="\ud800")}), "invalid", "'dtype'")
    # raw UTF-8-encoded surrogates in a bytes frame are not UTF-8 at all
    raw = json.dumps(_frame("run_start")).encode().replace(b'"r"', b'"\xed\xa0\x80"')
    with pytest.raises(ProtocolError):
        decode(raw)
    # a proper pair written as escapes is fine
    step = decode(json.dumps(_step_with(run="\U0001f525")))  # ensure_ascii: "\\ud83d\\udd25"
    assert isinstance(step, Step) and step.run == "\U0001f525"


@pytest.mark.parametrize("name", BAD_NAMES)
def test_check_name_refuses(name: str) -> None:
    with pytest.raises(ProtocolError) as caught:
        check_name(name)
    assert caught.value.code == "invalid"
    assert "name" in str(caught.value)


@pytest.mark.parametrize("value", [None, 5, b"bytes", ["x"]])
def test_check_name_refuses_non_strings(value: Any) -> None:
    with pytest.raises(ProtocolError, match="must be a string"):
        check_name(value)


# --------------------------------------------------------------------------- entries


@pytest.mark.parametrize("field", ["components", "scalars", "tensors"])
def test_too_many_entries(field: str) -> None:
    def entries(n: int) -> dict[str, Any]:
        return {f"k{i}": (_tensor() if field == "tensors" else float(i)) for i in range(n)}
    step = decode(json.dumps(_step_with(**{field: entries(MAX_ENTRIES)})))  # the limit is fine
    assert len(getattr(step, field)) == MAX_ENTRIES
    error = assert_bad(_step_with(**{field: entries(MAX_ENTRIES + 1)}), "invalid", f"'{field}'",
                    str(MAX_ENTRIES + 1), str(MAX_ENTRIES))
    assert "more than" in str(error)


def test_too_many_clip_components() -> None:
    comps = {f"c{i}": 1.0 for i in range(MAX_ENTRIES + 1)}
    assert_bad(_step_with(clip=_clip(components=comps)), "invalid", "'clip'", "'components'",
            "more than")


def test_too_many_records_in_a_batch() -> None:
    record = {k: v for k, v in VALID["run_end"].items() if k != "v"}
    batch = decode(json.dumps(_frame("batch", records=[record] * MAX_ENTRIES)))
    assert isinstance(batch, Batch) and len(batch.records) == MAX_ENTRIES
    assert_bad(_frame("batch", records=[record] * (MAX_ENTRIES + 1)), "invalid", "'records'",
            "more than")


# --------------------------------------------------------------------------- size


def test_frame_larger_than_max_bytes_is_too_large() -> None:
    text = json.dumps(VALID["step"])
    assert decode(text, max_bytes=len(text)) is not None  # exactly at the limit: fine
    error = assert_bad(text, "too_large", str(len(text)), str(len(text) - 1),
                    max_bytes=len(text) - 1)
    assert "bytes" in str(error)
    assert_bad(text.encode(), "too_large", max_bytes=len(text) - 1)


def test_size_is_checked_before_parsing() -> None:
    assert_bad("x" * 2000, "too_large", max_bytes=1024)  # would be malformed otherwise


def test_text_frames_are_measured_in_utf8_bytes() -> None:
    text = json.dumps(_step_with(run="é" * 100), ensure_ascii=False)
    size = len(text.encode("utf-8"))
    assert size == len(text) + 100
    assert decode(text, max_bytes=size) is not None
    assert_bad(text, "too_large", str(size), max_bytes=size - 1)
    assert_bad(text, "too_large", max_bytes=len(text))  # characters alone would pass
    assert_bad("é" * 3000, "too_large", "at least 3000 bytes", max_bytes=1024)  # no need to count


def test_no_limit_without_max_bytes() -> None:
    big = _step_with(scalars={f"s{i}": 1.0 for i in range(MAX_ENTRIES)})
    assert decode(json.dumps(big)) is not None


# --------------------------------------------------------------------------- messages


def test_error_messages_stay_short_for_huge_bad_values() -> None:
    # The message goes back to the sender in an error frame; it must not echo a megabyte.
    huge = "x" * 100_000
    for frame in (_step_with(loss=huge), {"v": 1, "type": huge}, {"v": huge},
                  _step_with(seq=[0] * 10_000), _frame("run_end", status=huge),
                  _frame("error", fatal=huge)):
        with pytest.raises(ProtocolError) as caught:
            decode(json.dumps(frame))
        assert len(str(caught.value)) < 300, str(caught.value)[:300]


def test_error_code_defaults_to_invalid() -> None:
    assert ProtocolError("x").code == "invalid"
    assert ProtocolError("x", code="too_large").code == "too_large"
    assert str(ProtocolError("field 'seq' is required")) == "field 'seq' is required"
