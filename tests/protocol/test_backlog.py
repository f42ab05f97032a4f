"""The sender's backlog in a batch frame: it round-trips, it is optional (a batch without it,
as older senders send, still decodes), and a bad one refuses the frame with a clear error."""

from __future__ import annotations

import json
from typing import Any

import pytest

from trainvitals.protocol import Batch, ProtocolError, RunStart, Step, decode, encode, encode_batch
from trainvitals.protocol.messages import Backlog
from trainvitals.protocol.transport import BATCH_OVERHEAD_BYTES

RECORDS = (RunStart(run="r", session="s", seq=0, time=1.0),
           Step(run="r", session="s", seq=1, step=0, time=2.0, loss=0.5))
BACKLOG = Backlog(records=2, bytes=4096, max_bytes=256 << 20, oldest_age=12.25, last_seq=1)
VALID = {"records": 2, "bytes": 1, "max_bytes": 1, "oldest_age": 0.0, "last_seq": 1}


def frame(**batch: Any) -> str:
    """A batch frame of RECORDS with ``batch``'s fields set (or removed, when None)."""
    obj = json.loads(encode(Batch(RECORDS, 3, BACKLOG)))
    for key, value in batch.items():
        if value is None:
            obj.pop(key)
        else:
            obj[key] = value
    return json.dumps(obj, separators=(",", ":"))


def test_a_batch_with_a_backlog_round_trips_through_both_encoders() -> None:
    full = Batch(RECORDS, dropped=3, backlog=BACKLOG)
    assert decode(encode(full)) == full
    spooled = encode_batch([encode(r) for r in RECORDS], 3, BACKLOG)
    assert decode(spooled) == full
    assert json.loads(spooled)["backlog"] == {"records": 2, "bytes": 4096,
                                              "max_bytes": 256 << 20, "oldest_age": 12.25,
                                              "last_seq": 1}


def test_a_batch_without_a_backlog_still_decodes() -> None:
    older = decode(frame(backlog=None))
    assert older == Batch(RECORDS, dropped=3, backlog=None)
    assert "backlog" not in encode_batch([encode(r) for r in RECORDS], 3)
    assert decode(encode_batch([encode(r) for r in RECORDS])) == Batch(RECORDS)


def test_the_largest_backlog_fits_in_the_batch_overhead() -> None:
    """A record alone in a frame fits when it is BATCH_OVERHEAD_BYTES below the limit: the
    frame around it, backlog included, never takes more."""
    top = (1 << 63) - 1
    widest = Backlog(records=top, bytes=top, max_bytes=top, oldest_age=1.7976931348623157e308,
                     last_seq=top)
    around = encode_batch([], top, widest)
    assert len(around.encode()) <= BATCH_OVERHEAD_BYTES
    assert decode(around) == Batch((), top, widest)


@pytest.mark.parametrize(("backlog", "says"), [
    ("lots", "field 'backlog' must be an object"),
    ({k: v for k, v in VALID.items() if k != "last_seq"}, "field 'last_seq' is required"),
    ({**VALID, "records": -1}, "field 'records' must not be negative"),
    ({**VALID, "records": True}, "field 'records' must be an integer, got True"),
    ({**VALID, "max_bytes": 1.5}, "field 'max_bytes' must be an integer, got 1.5"),
    ({**VALID, "oldest_age": "NaN"}, "field 'oldest_age' must be a finite number of seconds"),
    ({**VALID, "oldest_age": -1.0}, "field 'oldest_age' must be a finite number of seconds"),
])
def test_a_bad_backlog_refuses_the_frame_naming_the_field(backlog: Any, says: str) -> None:
    with pytest.raises(ProtocolError) as refused:
        decode(frame(backlog=backlog))
    # A wrong type or value in a field is ``invalid`` (docs/protocol.md, error codes); only a
    # frame that is not a JSON object is ``malformed``.
    assert refused.value.code == "invalid"
    assert says in str(refused.value)


def test_a_backlog_that_is_not_json_is_malformed() -> None:
    text = frame().replace('"oldest_age":12.25', '"oldest_age":NaN')
    assert '"oldest_age":NaN' in text
    with pytest.raises(ProtocolError) as refused:
        decode(text)
    assert refused.value.code == "malformed"
    assert "bare NaN is not JSON" in str(refused.value)
