"""The spool keeps steps as rows (protocol v2) and what cannot be a row as v1 text; either
way it keeps exactly what the server's decoder accepts, and gives back exactly what it was
given.

Property: for any sequence of steps (valid or not, of any field types), the spool takes a
step exactly when ``decode(encode(step))`` succeeds, and what it hands the sender — as one
version-2 frame and as version-1 text — decodes to that step.
"""

from __future__ import annotations

import json
import math
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from tests.protocol.test_precheck import _step, _verdict, step_changes
from tests.protocol.test_properties import FAST
from trainvitals.protocol import Record, RunEnd, RunStart, Step, TensorStats, decode, encode
from trainvitals.protocol.binary import decode_binary
from trainvitals.protocol.messages import Backlog
from trainvitals.protocol.rows import MAX_LAYOUTS, Packer, Row, assemble
from trainvitals.trainer_plugin.delivery.spool import Spool, SpoolRefused

STREAM = ("r", "s" * 16, 0)


def wire(record: Record) -> Any:
    """A record as the server sees it, as JSON (defaults filled in, NaN as "NaN", 3 and 3.0
    alike)."""
    seen = decode(encode(record))
    assert isinstance(seen, (RunStart, Step, RunEnd))
    return json.loads(encode(seen))


def spool() -> Spool:
    s = Spool(None, "r.r0.s", max_bytes=1 << 30, max_record_bytes=1 << 20)
    s.append(RunStart(run="r", session="s" * 16, seq=0, time=1.0), essential=True)
    return s


@given(step_changes)
@FAST
def test_the_spool_keeps_exactly_what_the_decoder_accepts_and_gives_it_back(
        changes: list[dict[str, Any]]) -> None:
    s = spool()
    kept: list[Step] = []
    for change in [{}, *changes]:
        step = _step(s.next_seq, **change)
        verdict = _verdict(step)
        if verdict.startswith("unencodable"):
            continue
        (outcome,) = s.append_many([(step, False)])
        assert isinstance(outcome, SpoolRefused) == bool(verdict), (change, verdict, outcome)
        if not verdict:
            kept.append(step)
    entries = s.read(1, 1000, 1 << 30)
    assert [wire(s.record(e)) for e in entries] == [wire(k) for k in kept]
    if entries:
        frame, count = assemble(STREAM, entries)
        assert count == len(entries)
        assert [wire(r) for r in decode_binary(frame).records] == [wire(k) for k in kept]


def test_an_ordinary_stream_is_all_rows_and_its_frame_is_the_rows_joined() -> None:
    s = spool()
    t = TensorStats(64, 1, 0, 2, -1.0, 3.0, 0.5, 3.0, "bfloat16", 85.0)
    for i in range(50):
        s.append(_step(s.next_seq, loss=math.nan if i == 7 else 1.0 / (i + 1),
                       tensors={"t": t, "u": TensorStats(8, 0, 0, 0, 0.0, 1.0, 0.5, 1.0,
                                                         "float32")}))
    entries = s.read(0, 1000, 1 << 30)
    assert isinstance(entries[0], str)  # the run start
    rows = entries[1:]
    assert all(isinstance(e, Row) for e in rows) and len(rows) == 50
    assert len({e.layout.id for e in rows if isinstance(e, Row)}) == 1
    frame, _ = assemble(STREAM, rows)
    width = len(rows[0].layout.names)  # type: ignore[union-attr]
    assert len(frame) < 50 * (26 + 8 * width) + 600  # names once, then 8 bytes a value
    back = decode_binary(frame).records
    assert [r.seq for r in back] == list(range(1, 51))
    assert math.isnan(back[7].loss)  # type: ignore[union-attr, arg-type]


def test_mixed_layouts_share_one_frame_and_keep_their_own_names() -> None:
    s = spool()
    for i in range(12):
        extra = {"val": -math.inf} if i % 3 == 0 else {}
        s.append(_step(s.next_seq, scalars={"x": float(i), **extra},
                       components={} if i % 4 == 1 else {"a": 1.0}))
    entries = s.read(1, 1000, 1 << 30)
    frame, count = assemble(STREAM, entries)
    assert count == 12
    back = decode_binary(frame).records
    assert [wire(r) for r in back] == [wire(s.record(e)) for e in entries]
    assert [sorted(r.scalars) for r in back if isinstance(r, Step)][:4] == [
        ["val", "x"], ["x"], ["x"], ["val", "x"]]


def test_a_frame_stops_where_the_byte_limit_would_be_passed() -> None:
    s = spool()
    for _ in range(40):
        s.append(_step(s.next_seq, scalars={f"s{i}": 1.0 for i in range(30)}))
    entries = s.read(1, 1000, 1 << 30)
    frame, count = assemble(STREAM, entries, max_bytes=4000)
    assert 1 < count < 40 and len(frame) <= 4000
    assert [r.seq for r in decode(frame).records] == list(range(1, count + 1))  # type: ignore[union-attr]
    alone, one = assemble(STREAM, entries, max_bytes=10)  # the first always goes
    assert one == 1 and len(decode_binary(alone).records) == 1


@given(st.integers(200, 30_000), st.integers(0, 2**63 - 1), st.booleans(),
       st.lists(st.sampled_from(["x", "é\"\\n", "t" * 150, "loss/a"]), min_size=1, max_size=4))
@FAST
def test_a_frame_never_passes_its_byte_limit_unless_one_record_alone_does(
        limit: int, dropped: int, with_backlog: bool, names: list[str]) -> None:
    s = spool()
    for i in range(30):
        scalars = {f"{n}{j}": float(j) for j, n in enumerate(names[: 1 + i % len(names)])}
        s.append(_step(s.next_seq, scalars=scalars,
                       tensors={"t" * 100: TensorStats(4, 0, 0, 0, -1.0, 1.0, 0.0, 1.0,
                                                       "float32")}))
    s.append(RunEnd(run="r", session="s" * 16, seq=0, time=2.0, reason="é" * 50),
             essential=True)
    backlog = Backlog(records=2**63 - 1, bytes=2**63 - 1, max_bytes=2**63 - 1,
                      oldest_age=1e300, last_seq=2**63 - 1) if with_backlog else None
    entries = s.read(0, 1000, 1 << 30)
    while entries:
        frame, count = assemble(STREAM, entries, dropped=dropped, backlog=backlog,
                                max_bytes=limit)
        assert count >= 1 and (len(frame) <= limit or count == 1), (len(frame), count)
        assert len(decode_binary(frame).records) == count
        entries = entries[count:]


def test_names_that_change_every_step_stop_making_layouts_and_go_as_text() -> None:
    packer = Packer(STREAM)
    rows = [packer.pack(_step(i, scalars={f"lr_{i}": 1.0}), i) for i in range(MAX_LAYOUTS + 5)]
    assert all(r is not None for r in rows[:MAX_LAYOUTS])
    assert rows[MAX_LAYOUTS:] == [None] * 5  # bounded memory; the spool keeps them as text
    again = packer.pack(_step(1, scalars={"lr_1": 2.0}), 99)
    assert again is not None and again.layout is rows[1].layout  # known layouts still pack
