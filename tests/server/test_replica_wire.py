"""Relay envelopes: every payload fits a NOTIFY, steps are cut between records, nothing is lost."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from trainvitals.server.live import relay_wire as wire


def step(i: int, series: int = 20) -> dict[str, Any]:
    values: dict[str, Any] = {f"tensor/layer{k}/max": k * 0.5 + i for k in range(series)}
    values["loss"] = math.nan if i % 7 == 0 else 1.0 / (i + 1)
    return {"rank": 0, "step": i, "time": 1.0e9 + i, "values": values, "clip": None}


def steps_message(records: list[dict[str, Any]]) -> dict[str, Any]:
    return {"type": "steps", "run": "big run ü", "run_id": 3, "records": records}


def roundtrip(run: str | None, message: dict[str, Any]) -> wire.Envelope:
    return wire.decode(wire.encode("a" * 16, 2**63, run, message))


def test_a_small_message_is_one_piece_and_comes_back_with_nan_as_the_string() -> None:
    message = steps_message([step(0)])
    assert wire.split("r", message) == [message]
    back = roundtrip("r", message)
    assert back.replica == "a" * 16 and back.run == "r" and back.spill is None
    assert back.message is not None
    assert back.message["records"][0]["values"]["loss"] == "NaN"


def test_a_big_steps_message_is_cut_between_records_in_order_and_every_piece_fits() -> None:
    records = [step(i) for i in range(300)]
    message = steps_message(records)
    pieces = wire.split("big run ü", message)

    assert len(pieces) > 1
    assert [r for p in pieces for r in p["records"]] == records  # whole, in order, once
    for piece in pieces:
        assert {k: v for k, v in piece.items() if k != "records"} == {
            "type": "steps", "run": "big run ü", "run_id": 3}
        payload = wire.encode("f" * 16, 2**63, "big run ü", piece)  # widest counter
        assert payload.isascii() and len(payload.encode()) <= wire.PAYLOAD_LIMIT


def test_a_record_too_big_alone_is_its_own_piece_for_the_spill_table() -> None:
    huge = step(5, series=600)
    pieces = wire.split("r", steps_message([step(1), huge, step(2)]))
    assert [[r["step"] for r in p["records"]] for p in pieces] == [[1], [5], [2]]
    assert len(wire.encode("x", 1, "r", pieces[1])) > wire.PAYLOAD_LIMIT
    notice = wire.decode(wire.spill_notice("x", 1, 42))
    assert notice.spill == 42 and notice.message is None


def test_other_messages_are_never_cut() -> None:
    alert = {"type": "alert", "change": "opened", "alert": {"details": {"x": "y" * 9000}}}
    assert wire.split(None, alert) == [alert]


@pytest.mark.parametrize("text", ["", "[]", '{"n": 1}', '{"r": "x"}', '{"r": "x", "m": 3}',
                                  '{"r": "x", "run": 5, "m": {}}'])
def test_foreign_payloads_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        wire.decode(text)


def test_payloads_are_unique_per_counter() -> None:
    # PostgreSQL collapses identical payloads within one transaction: the counter prevents it.
    a, b = (wire.encode("x", n, None, wire.RESYNC) for n in (1, 2))
    assert a != b and json.loads(a)["m"] == json.loads(b)["m"] == {"type": "resync"}
