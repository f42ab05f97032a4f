"""Pure helpers the stores share: JSON columns, step bounds and the steps/s estimate.

JSON columns (run config, stream versions, clip components, alert details) hold text in the wire
encoding of floats (``"NaN"``, ``"Infinity"``, ``"-Infinity"``), so every store keeps them the
same way and none needs a JSON dialect that allows non-finite numbers.
"""

from __future__ import annotations

import json
from typing import Any

from trainvitals.protocol import float_from_wire, float_to_wire

__all__ = [
    "STEP_MAX",
    "STEP_MIN",
    "decode_details",
    "dumps_json",
    "hi_step",
    "lo_step",
    "loads_json",
    "steps_per_second",
]

STEP_MIN, STEP_MAX = -(2**63), 2**63 - 1  # every step fits a signed 64-bit integer


def dumps_json(obj: Any) -> str:
    """Compact JSON text of ``obj`` with non-finite floats as their wire strings."""
    return json.dumps(_wire(obj), allow_nan=False, separators=(",", ":"))


def _wire(obj: Any) -> Any:
    if isinstance(obj, float):
        return float_to_wire(obj)
    if isinstance(obj, dict):
        return {str(k): _wire(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_wire(v) for v in obj]
    return obj


def loads_json(text: str | None) -> dict[str, Any]:
    """The dict a JSON column holds; empty for NULL or ''."""
    return {} if not text else dict(json.loads(text))


def decode_details(details: dict[str, Any]) -> dict[str, Any]:
    """Alert details with the wire strings of non-finite floats turned back into floats."""
    return {k: float_from_wire(v) if v in ("NaN", "Infinity", "-Infinity") else v
            for k, v in details.items()}


def steps_per_second(recent: list[tuple[int, float]]) -> float | None:
    """Steps per second of the trainer's clock over (step, time) pairs, newest first, or None
    if unknown."""
    if len(recent) < 2:
        return None
    (s1, t1), (s0, t0) = recent[0], recent[-1]
    return (s1 - s0) / (t1 - t0) if t1 > t0 else None


def lo_step(step: int | None) -> int:
    """The lower bound of a step range; None means from the first step."""
    return STEP_MIN if step is None else step


def hi_step(step: int | None) -> int:
    """The upper bound of a step range; None means up to the last step."""
    return STEP_MAX if step is None else step
