"""What server replicas tell each other: envelopes that fit one PostgreSQL NOTIFY payload.

Pure (no I/O); ``trainvitals.server.live.relay`` sends and receives them. An envelope is a JSON
object ``{"r": replica id, "n": counter, "run": run or null, "m": live message}``, or
``{"r": ..., "n": ..., "spill": row id}`` for a message too big for a payload, which waits in
a table. ``n`` makes every payload unique: PostgreSQL delivers identical payloads sent in one
transaction only once. JSON is ASCII-only (``\\u`` escapes), so length in characters is length
in bytes whatever the database's encoding, and NaN/±Inf travel as the usual strings.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from trainvitals.protocol.wire_json import to_wire

__all__ = ["PAYLOAD_LIMIT", "RESYNC", "Envelope", "decode", "encode", "spill_notice", "split"]

PAYLOAD_LIMIT = 7999  # PostgreSQL refuses NOTIFY payloads of 8000 bytes or more
HEADROOM = 64  # room for the "r" and "n" fields around what ``split`` measures
RESYNC: dict[str, Any] = {"type": "resync"}


@dataclass(frozen=True)
class Envelope:
    """One payload read back: a message for this replica's hub, or where to fetch it."""

    replica: str
    run: str | None = None
    message: dict[str, Any] | None = None
    spill: int | None = None  # the row holding the envelope, when it did not fit


def _dumps(obj: Any) -> str:
    return json.dumps(to_wire(obj), allow_nan=False, separators=(",", ":"), ensure_ascii=True)


def encode(replica: str, n: int, run: str | None, message: dict[str, Any]) -> str:
    """The payload carrying ``message`` (may exceed ``PAYLOAD_LIMIT``: then spill it)."""
    return _dumps({"r": replica, "n": n, "run": run, "m": message})


def spill_notice(replica: str, n: int, row: int) -> str:
    """The payload that points at an envelope kept in row ``row`` of the spill table."""
    return _dumps({"r": replica, "n": n, "spill": row})


def decode(text: str) -> Envelope:
    """An envelope from a payload or a spilled row; ``ValueError`` if it is not one."""
    obj = json.loads(text)
    if not isinstance(obj, dict) or not isinstance(obj.get("r"), str):
        raise ValueError("not a trainvitals relay envelope")
    if isinstance(obj.get("spill"), int):
        return Envelope(obj["r"], spill=obj["spill"])
    run, message = obj.get("run"), obj.get("m")
    if not isinstance(message, dict) or not (run is None or isinstance(run, str)):
        raise ValueError("relay envelope without a message")
    return Envelope(obj["r"], run, message)


def split(run: str | None, message: dict[str, Any],
          limit: int = PAYLOAD_LIMIT) -> list[dict[str, Any]]:
    """``message`` as pieces whose envelopes fit ``limit``: a ``steps`` message is cut between
    its records, in order; a piece of one record may still be too big (it is spilled), and
    any other message is returned whole."""
    budget = limit - HEADROOM
    if message.get("type") != "steps" or len(_dumps({"run": run, "m": message})) <= budget:
        return [message]
    base = len(_dumps({"run": run, "m": {**message, "records": []}}))
    pieces: list[list[Any]] = [[]]
    size = base
    for record in message["records"]:
        grown = size + len(_dumps(record)) + (1 if pieces[-1] else 0)  # 1: the comma
        if pieces[-1] and grown > budget:
            pieces.append([])
            grown = base + len(_dumps(record))
        pieces[-1].append(record)
        size = grown
    return [{**message, "records": chunk} for chunk in pieces]
