"""Where non-finite values started, as the plugin's ``watch`` located them, in words.

The ``nonfinite`` rule names the origin in every message while one is known, and keeps one
alert on the series ``origin`` that says it in its headline: "NaN first produced by
model.point_head (Conv2d) at step 1,532".
"""

from __future__ import annotations

import os

from trainvitals.protocol import NonFiniteOrigin, Step
from trainvitals.server.alerts import text
from trainvitals.server.alerts.model import Details, Finding

__all__ = ["origin_details", "origin_finding", "origin_text"]


def origin_text(origin: NonFiniteOrigin) -> str:
    """One sentence, e.g. ``NaN first produced by model.head (Conv2d) at step 1,532: exp at
    model.py:41 in forward; first non-finite gradient: model.head.weight.``"""
    value = "NaN" if origin.kind == "nan" else "Inf"
    at = f"at step {text.step(origin.step)}"
    kind = f" ({origin.module_type})" if origin.module_type else ""
    if origin.stage == "backward" or origin.module is None:
        head = f"{value} first appeared in the backward pass {at}"
    elif origin.stage == "input":
        head = f"{value} came in with the inputs of {origin.module}{kind} {at}"
    else:
        head = f"{value} first produced by {origin.module}{kind} {at}"
    if origin.op is not None:
        head += f": {origin.op}" + (f" at {_short(origin.source)}" if origin.source else "")
    if origin.param is not None:
        head += f"; first non-finite gradient: {origin.param}"
    return head + "."


def origin_details(origin: NonFiniteOrigin) -> Details:
    """The origin's fields for an alert's details (absent parts left out)."""
    details: Details = {"origin_step": origin.step, "origin_kind": origin.kind,
                        "origin_stage": origin.stage}
    for name in ("module", "module_type", "param", "op", "source"):
        value = getattr(origin, name)
        if value is not None:
            details[f"origin_{name}"] = value
    return details


def origin_finding(step: Step, origin: NonFiniteOrigin) -> Finding:
    """The critical ``nonfinite`` finding on the series ``origin``."""
    return Finding("nonfinite", "origin", "critical", origin_text(origin),
                   origin_details(origin), origin.step)


def _short(source: str) -> str:
    """``/long/path/model.py:41 in forward`` → ``model.py:41 in forward``."""
    location, sep, rest = source.partition(" in ")
    path, colon, line = location.rpartition(":")
    if not colon:
        return source
    return f"{os.path.basename(path)}:{line}{sep}{rest}"
