"""``Precheck`` says what the decoder says, without decoding the steps it has seen the like of.

Property: for any sequence of steps (valid or not, of any field types), ``problem`` is "" exactly
when ``decode(encode(step))`` succeeds — checked against the decoder itself — and most steps of
an ordinary stream never reach the decoder.
"""

from __future__ import annotations

import math
from typing import Any
from unittest import mock

from hypothesis import given
from hypothesis import strategies as st

from trainvitals.protocol import ProtocolError, Step, TensorStats, decode, encode
from trainvitals.protocol import precheck as precheck_module
from trainvitals.protocol.precheck import Precheck

from .test_properties import FAST

# Values of every kind a field might wrongly get: the fast path must send them to the decoder.
odd = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-(2**70), 2**70),
                st.booleans(), st.none(), st.text(max_size=3))
key = st.sampled_from(["loss/a", "tensor", "x", "", "a\x00b", "é", "n" * 300])
stats = st.builds(TensorStats, count=odd, nan=odd, posinf=odd, neginf=odd, min=odd, max=odd,
                  mean=odd, absmax=odd, dtype=st.sampled_from(["float32", "", 3, "\ud800"]),
                  headroom=odd)


def _step(seq: int, **fields: Any) -> Step:
    base: dict[str, Any] = {"run": "r", "session": "s" * 16, "seq": seq, "step": seq,
                            "time": 1.7e9 + seq, "loss": 0.5, "components": {"a": 1.0},
                            "scalars": {"x": 2.0},
                            "tensors": {"t": TensorStats(4, 0, 0, 0, -1.0, 1.0, 0.0, 1.0,
                                                         "float32")}}
    base.update(fields)
    return Step(**base)


def _verdict(step: Step) -> str:
    try:
        line = encode(step)
    except (TypeError, ValueError) as exc:  # not even encodable: the spool never sees it
        return f"unencodable: {exc}"
    try:
        decode(line)
    except ProtocolError as exc:
        return str(exc)
    return ""


# Changes to a known good step, of any field types (also the spool's test, tests/trainer_plugin).
step_changes = st.lists(st.fixed_dictionaries({}, optional={
    "step": odd, "time": odd, "loss": odd, "lr": odd, "rank": odd,
    "components": st.dictionaries(key, odd, max_size=3),
    "scalars": st.dictionaries(key, odd, max_size=3),
    "tensors": st.dictionaries(key, stats, max_size=2),
}), min_size=1, max_size=6)


@given(step_changes)
@FAST
def test_precheck_agrees_with_the_decoder_on_any_steps(changes: list[dict[str, Any]]) -> None:
    check = Precheck()
    assert check.problem(_step(0), encode(_step(0))) == ""  # the stream's first, known good
    for seq, change in enumerate(changes, start=1):
        step = _step(seq, **change)
        expected = _verdict(step)
        if expected.startswith("unencodable"):
            continue
        assert check.problem(step, encode(step)) == expected, change


def test_an_ordinary_stream_is_decoded_only_where_something_is_new() -> None:
    check = Precheck()
    with mock.patch.object(precheck_module, "decode", wraps=decode) as spy:
        for seq in range(100):
            step = _step(seq, loss=math.nan if seq == 50 else 0.1 * seq,
                         scalars={"x": float(seq), **({"new": 1.0} if seq >= 70 else {})})
            assert check.problem(step, encode(step)) == ""
    assert spy.call_count == 2  # the first step, and the first with a new name (step 70)


def test_a_refused_step_stays_refused_and_teaches_nothing() -> None:
    check = Precheck()
    check.problem(_step(0), encode(_step(0)))
    bad = _step(1, scalars={"bad\x00name": 1.0})
    assert "name" in check.problem(bad, encode(bad))
    assert "name" in check.problem(bad, encode(bad))  # not remembered as accepted
    late = _step(2, time=math.inf)
    assert "'time' must be a finite" in check.problem(late, encode(late))


def test_a_dtype_accepted_as_text_does_not_vouch_for_a_name() -> None:
    """dtypes are any text to the decoder, names are not: an empty dtype accepted once must not
    let an empty component name through the fast path."""
    check = Precheck()
    odd = _step(0, tensors={"t": TensorStats(4, 0, 0, 0, -1.0, 1.0, 0.0, 1.0, "")})
    assert check.problem(odd, encode(odd)) == ""
    bad = _step(1, components={"": 1.0},
                tensors={"t": TensorStats(4, 0, 0, 0, -1.0, 1.0, 0.0, 1.0, "")})
    assert "1 to 200 characters" in check.problem(bad, encode(bad))
