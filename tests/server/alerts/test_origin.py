"""Alerts name where non-finite values started (``Step.origin``)."""

from __future__ import annotations

import math

import pytest

from trainvitals.protocol import NonFiniteOrigin, Step
from trainvitals.server.alerts import AlertConfig, AlertEngine
from trainvitals.server.alerts.origin import origin_text

HEAD = NonFiniteOrigin(step=1532, module="model.point_head", module_type="Conv2d")


@pytest.mark.parametrize(("origin", "text"), [
    (HEAD, "NaN first produced by model.point_head (Conv2d) at step 1,532."),
    (NonFiniteOrigin(step=1532, kind="inf", module="model.point_head", module_type="Conv2d",
                     param="model.point_head.weight", op="exp",
                     source="/home/me/proj/model.py:41 in forward"),
     "Inf first produced by model.point_head (Conv2d) at step 1,532: exp at model.py:41 in "
     "forward; first non-finite gradient: model.point_head.weight."),
    (NonFiniteOrigin(step=7, stage="backward", param="model.norm.w"),
     "NaN first appeared in the backward pass at step 7; first non-finite gradient: "
     "model.norm.w."),
    (NonFiniteOrigin(step=7, kind="inf", stage="input", module="model", module_type="Net"),
     "Inf came in with the inputs of model (Net) at step 7."),
    (NonFiniteOrigin(step=7, module="m", op="log", source="no-location"),
     "NaN first produced by m at step 7: log at no-location."),
])
def test_origin_text(origin: NonFiniteOrigin, text: str) -> None:
    assert origin_text(origin) == text


def at(n: int, *, loss: float = 1.0, origin: NonFiniteOrigin | None = None) -> Step:
    return Step(run="r", session="s", seq=n + 1, step=n, loss=loss, origin=origin)


def test_nonfinite_messages_name_the_origin_until_a_clean_step() -> None:
    engine = AlertEngine(AlertConfig(resolve_after=2))
    origin = NonFiniteOrigin(step=3, module="model.head", module_type="Linear")
    engine.observe(at(2))
    first = engine.observe(at(3, loss=math.nan, origin=origin))
    assert [(c.kind, c.alert.series) for c in first] == [("opened", "loss"),
                                                          ("opened", "origin")]
    loss, headline = (c.alert for c in first)
    assert loss.message == ("Non-finite value at step 3: loss is NaN. NaN first produced by "
                            "model.head (Linear) at step 3.")
    assert loss.details["origin_module"] == "model.head"
    assert headline.message == "NaN first produced by model.head (Linear) at step 3."
    assert (headline.severity, headline.first_step) == ("critical", 3)

    later = engine.observe(at(4, loss=math.nan))  # still NaN, no new origin: the same one
    assert [(c.kind, c.alert.series) for c in later] == [("updated", "loss"),
                                                          ("updated", "origin")]
    assert later[0].alert.message.endswith("NaN first produced by model.head (Linear) at step 3.")

    assert engine.observe(at(5)) == []  # clean: the episode ends, nothing resolved yet
    again = engine.observe(at(6, loss=math.inf))  # a new episode without a known origin
    assert [(c.kind, c.alert.series) for c in again] == [("updated", "loss"),
                                                          ("resolved", "origin")]
    assert again[0].alert.message == "Non-finite value at step 6: loss is +Inf."


def test_a_later_record_with_the_op_trace_completes_the_headline() -> None:
    engine = AlertEngine()
    origin = NonFiniteOrigin(step=3, module="model.head", module_type="Linear")
    engine.observe(at(3, loss=math.nan, origin=origin))
    engine.observe(at(4))  # the trainer skipped the step; this one is clean
    traced = NonFiniteOrigin(step=3, module="model.head", module_type="Linear", op="exp",
                             source="/x/model.py:41 in forward")
    (change,) = engine.observe(at(5, origin=traced))
    assert (change.kind, change.alert.series) == ("updated", "origin")
    assert change.alert.message == ("NaN first produced by model.head (Linear) at step 3: exp "
                                    "at model.py:41 in forward.")
    assert (change.alert.first_step, change.alert.details["origin_op"]) == (3, "exp")
