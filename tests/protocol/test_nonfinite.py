"""NaN, +Inf and -Inf survive exactly in every float field, as strings on a strict-JSON wire."""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

import pytest

from trainvitals.protocol import (
    Batch,
    ClipEvent,
    ProtocolError,
    Step,
    TensorStats,
    decode,
    encode,
    float_from_wire,
    float_to_wire,
)

# float("nan") rather than math.nan: a distinct object, so no equality check can pass by identity
NAN, POSINF, NEGINF = float("nan"), float("inf"), float("-inf")
NON_FINITE = [pytest.param(NAN, "NaN", id="nan"), pytest.param(POSINF, "Infinity", id="+inf"),
              pytest.param(NEGINF, "-Infinity", id="-inf")]

# Every float field of a Step, as its path in the decoded Step and in the JSON frame.
FLOAT_PATHS = [
    ("loss",), ("loss_used",), ("grad_norm",), ("grad_norm_post",), ("lr",),
    ("components", "depth"), ("scalars", "tokens_per_s"),
    ("tensors", "w", "min"), ("tensors", "w", "max"), ("tensors", "w", "mean"),
    ("tensors", "w", "absmax"), ("tensors", "w", "headroom"),
    ("clip", "raw"), ("clip", "threshold"), ("clip", "components", "depth"),
]


def _base_step() -> Step:
    return Step(
        run="r", session="s", seq=3, step=30, time=100.0, loss=1.0, loss_used=1.0,
        grad_norm=1.0, grad_norm_post=1.0, lr=1.0, components={"depth": 1.0, "other": 2.0},
        scalars={"tokens_per_s": 1.0, "other": 2.0},
        tensors={"w": TensorStats(count=4, nan=1, posinf=1, neginf=1, min=1.0, max=1.0,
                                  mean=1.0, absmax=1.0, dtype="float32", headroom=1.0)},
        clip=ClipEvent(raw=1.0, threshold=1.0, action="passed", reason="nan",
                       components={"depth": 1.0, "other": 2.0}),
    )


def _with(obj: Any, path: tuple[str, ...], value: float) -> Any:
    """A copy of ``obj`` (dataclass or dict) with the float at ``path`` replaced."""
    head, rest = path[0], path[1:]
    if isinstance(obj, dict):
        return {**obj, head: value if not rest else _with(obj[head], rest, value)}
    return dataclasses.replace(obj, **{head: value if not rest else
                                       _with(getattr(obj, head), rest, value)})


def _at(obj: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        obj = obj[key] if isinstance(obj, dict) else getattr(obj, key)
    return obj


def _strict_json(text: str) -> Any:
    def refuse(token: str) -> Any:
        raise AssertionError(f"bare {token} token in {text[:80]}…")
    return json.loads(text, parse_constant=refuse)


def _same_float(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


@pytest.mark.parametrize(("value", "name"), NON_FINITE)
@pytest.mark.parametrize("path", FLOAT_PATHS, ids=["/".join(p) for p in FLOAT_PATHS])
def test_non_finite_survives_in_every_float_field(path: tuple[str, ...], value: float,
                                                  name: str) -> None:
    step = _with(_base_step(), path, value)
    text = encode(step)
    obj = _strict_json(text)  # valid strict JSON: no bare NaN / Infinity tokens
    assert _at(obj, path) == name  # carried as the string name …
    assert f'"{name}"' in text
    back = decode(text)
    got = _at(back, path)
    assert isinstance(got, float)
    if math.isnan(value):
        assert math.isnan(got)
    else:
        assert got == value and math.isinf(got) and (got > 0) == (value > 0)
    # … and nothing else changed: every other float still reads back as itself.
    for other in FLOAT_PATHS:
        if other != path:
            assert _at(back, other) == _at(step, other), other
    assert _at(back, ("components", "other")) == 2.0


@pytest.mark.parametrize(("value", "name"), NON_FINITE)
def test_non_finite_survives_inside_a_batch(value: float, name: str) -> None:
    steps = tuple(_with(_base_step(), p, value) for p in FLOAT_PATHS)
    text = encode(Batch(records=steps))
    _strict_json(text)
    assert text.count(f'"{name}"') == len(FLOAT_PATHS)
    back = decode(text)
    assert isinstance(back, Batch)
    for path, record in zip(FLOAT_PATHS, back.records, strict=True):
        assert _same_float(_at(record, path), value)


def test_all_three_at_once_in_one_step() -> None:
    step = dataclasses.replace(_base_step(), loss=NAN, loss_used=POSINF, grad_norm=NEGINF,
                               scalars={"a": NAN, "b": POSINF, "c": NEGINF})
    text = encode(step)
    assert '"loss":"NaN"' in text
    assert '"loss_used":"Infinity"' in text
    assert '"grad_norm":"-Infinity"' in text
    assert '"scalars":{"a":"NaN","b":"Infinity","c":"-Infinity"}' in text
    back = decode(text)
    assert isinstance(back, Step)
    assert math.isnan(back.loss)  # type: ignore[arg-type]
    assert back.loss_used == math.inf
    assert back.grad_norm == -math.inf
    assert math.isnan(back.scalars["a"])
    assert back.scalars["b"] == math.inf and back.scalars["c"] == -math.inf


def test_tensor_with_no_finite_element() -> None:
    stats = TensorStats(count=2, nan=2, posinf=0, neginf=0, min=NAN, max=NAN, mean=NAN,
                        absmax=NAN, dtype="float16", headroom=NAN)
    back = decode(encode(Step(run="r", session="s", seq=1, step=0, tensors={"t": stats})))
    assert isinstance(back, Step)
    t = back.tensors["t"]
    assert all(math.isnan(x) for x in (t.min, t.max, t.mean, t.absmax))
    assert t.headroom is not None and math.isnan(t.headroom)
    assert (t.count, t.nan, t.nonfinite, t.dtype) == (2, 2, 2, "float16")


def test_negative_zero_and_extremes_keep_their_bits() -> None:
    for value in (-0.0, 5e-324, 1.7976931348623157e308, -1.7976931348623157e308, 0.1 + 0.2):
        back = decode(encode(Step(run="r", session="s", seq=1, step=0, loss=value)))
        assert isinstance(back, Step) and back.loss is not None
        assert back.loss == value
        assert math.copysign(1.0, back.loss) == math.copysign(1.0, value)


def test_float_to_wire_names() -> None:
    assert float_to_wire(NAN) == "NaN"
    assert float_to_wire(POSINF) == "Infinity"
    assert float_to_wire(NEGINF) == "-Infinity"
    assert float_to_wire(1.5) == 1.5
    assert float_to_wire(-0.0) == 0.0


def test_float_from_wire_inverts_it_like_python_float() -> None:
    for name in ("NaN", "Infinity", "-Infinity"):
        got, expected = float_from_wire(name), float(name)  # float(s) restores the same value
        assert _same_float(got, expected)
        assert math.isnan(got) == math.isnan(expected)
    assert float_from_wire(2) == 2.0 and type(float_from_wire(2)) is float
    assert float_from_wire(-1.25) == -1.25


@pytest.mark.parametrize("bad", ["nan", "inf", "+Infinity", "-inf", "NAN", " NaN", "1.5", "",
                                 None, True, False, [], {}])
def test_float_from_wire_refuses_everything_else(bad: Any) -> None:
    with pytest.raises(TypeError):
        float_from_wire(bad)


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity"])
def test_bare_non_finite_tokens_are_malformed(token: str) -> None:
    text = f'{{"v":1,"type":"step","run":"r","session":"s","seq":1,"step":0,"loss":{token}}}'
    with pytest.raises(ProtocolError) as caught:
        decode(text)
    assert caught.value.code == "malformed"
    assert token in str(caught.value)
    assert f'"{token}"' in str(caught.value)  # and it says what to send instead
