"""The optional ``origin`` of a step: where non-finite values started (``Monitor.watch``)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from trainvitals.protocol import NonFiniteOrigin, ProtocolError, Step, decode, encode


def step_frame(**fields: Any) -> str:
    return json.dumps({"v": 1, "type": "step", "run": "r", "session": "s", "seq": 1, "step": 9,
                       **fields})


def test_a_full_origin_round_trips_and_has_the_documented_shape() -> None:
    origin = NonFiniteOrigin(step=1532, kind="inf", stage="forward", module="model.point_head",
                             module_type="Conv2d", param="model.point_head.weight", op="exp",
                             source="/src/model.py:41 in forward")
    step = Step(run="r", session="s", seq=3, step=1540, origin=origin)
    text = encode(step)
    assert json.loads(text)["origin"] == {
        "step": 1532, "kind": "inf", "stage": "forward", "module": "model.point_head",
        "module_type": "Conv2d",
        "param": "model.point_head.weight", "op": "exp", "source": "/src/model.py:41 in forward"}
    assert decode(text) == step


def test_unknown_parts_are_absent_on_the_wire_and_none_when_read() -> None:
    text = encode(Step(run="r", session="s", seq=1, step=5,
                       origin=NonFiniteOrigin(step=5, stage="backward", param="w")))
    assert json.loads(text)["origin"] == {"step": 5, "kind": "nan", "stage": "backward",
                                          "param": "w"}
    back = decode(text)
    assert isinstance(back, Step)
    assert back.origin == NonFiniteOrigin(step=5, kind="nan", stage="backward", module=None,
                                          module_type=None, param="w", op=None, source=None)


def test_a_step_without_origin_is_backward_compatible() -> None:
    assert "origin" not in json.loads(encode(Step(run="r", session="s", seq=1, step=0)))
    step = decode(step_frame())
    assert isinstance(step, Step) and step.origin is None


def test_kind_and_stage_default_to_nan_and_forward() -> None:
    step = decode(step_frame(origin={"step": 3, "module": "m"}))
    assert isinstance(step, Step) and step.origin == NonFiniteOrigin(step=3, module="m")
    assert (step.origin.kind, step.origin.stage) == ("nan", "forward")


@pytest.mark.parametrize(("origin", "words"), [
    ([], ["'origin'", "must be an object"]),
    ({}, ["origin", "'step'", "is required"]),
    ({"step": 1.5}, ["'step'", "integer"]),
    ({"step": True}, ["'step'", "integer"]),
    ({"step": 1, "kind": "NaN"}, ["'kind'", "nan, inf"]),
    ({"step": 1, "stage": "loss"}, ["'stage'", "forward, backward, input"]),
    ({"step": 1, "module": 3}, ["'module'", "string"]),
    ({"step": 1, "module": ""}, ["'module'", "1 to 1000"]),
    ({"step": 1, "op": "x" * 1001}, ["'op'", "1 to 1000"]),
    ({"step": 1, "source": "a\nb"}, ["'source'", "control"]),
    ({"step": 1, "param": None}, ["'param'", "string"]),
])
def test_bad_origins_are_invalid_and_named(origin: Any, words: list[str]) -> None:
    with pytest.raises(ProtocolError) as caught:
        decode(step_frame(origin=origin))
    assert caught.value.code == "invalid"
    for word in words:
        assert word in str(caught.value), (word, str(caught.value))


def test_labels_may_be_long_paths_up_to_the_limit() -> None:
    source = "/" + "d/" * 400 + "model.py:41 in forward"
    assert len(source) < 1000
    step = decode(step_frame(origin={"step": 1, "source": source}))
    assert isinstance(step, Step) and step.origin is not None
    assert step.origin.source == source
