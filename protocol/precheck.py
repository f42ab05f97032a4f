"""Would the server accept this record? Answered before a record is spooled, cheaply.

The spool keeps only records the server's decoder accepts (a refused record would block its
stream). Asking the decoder itself costs a full ``decode`` of every encoded record — about as
much as encoding it (≈150 µs for a step of 100 values), on every step, in the trainer's
process. ``Precheck`` asks it only for what it has not seen: the first record of a stream and
any step with a name, an origin or a clip event it has not validated yet go through ``decode``;
a step like those before it (same stream, names already accepted, numbers of the right types
and ranges) is checked field by field here, without parsing anything. The rules are the
decoder's (``codec``): a record ``Precheck`` passes, ``decode`` passes.
"""

from __future__ import annotations

import math
from typing import Any

from trainvitals.protocol.codec import INT_MAX, INT_MIN, MAX_ENTRIES, decode
from trainvitals.protocol.errors import ProtocolError
from trainvitals.protocol.messages import Record, Step, TensorStats

__all__ = ["Precheck"]

MAX_NAMES = 100_000  # names remembered as accepted (each a short string)


class Precheck:
    """Validates the records of one stream, in order; not thread-safe (the spool's lock)."""

    def __init__(self) -> None:
        self._stream: tuple[str, str, int] | None = None
        self._names: set[str] = set()  # map keys the decoder accepted (the name rule)
        self._dtypes: set[str] = set()  # dtype strings it accepted (any text: another rule)

    def problem(self, record: Record, line: str) -> str:
        """Why the server would refuse ``record`` (encoded as ``line``); "" if it would not."""
        if self._like_before(record):
            return ""
        try:
            decode(line)
        except ProtocolError as exc:
            return str(exc)
        self._remember(record)
        return ""

    def _remember(self, record: Record) -> None:
        self._stream = (record.run, record.session, record.rank)
        if isinstance(record, Step) and len(self._names) < MAX_NAMES:
            self._names.update(record.components, record.scalars, record.tensors)
            self._dtypes.update(t.dtype for t in record.tensors.values())

    def _like_before(self, record: Record) -> bool:
        """A step of the known stream whose every field the decoder accepted before, in kind."""
        if type(record) is not Step or record.origin is not None or record.clip is not None:
            return False
        stream = (record.run, record.session, record.rank)
        if type(record.rank) is not int or stream != self._stream:
            return False  # (0.0 == 0: a float rank would pass the comparison alone)
        if not (_int(record.step) and _int(record.seq) and record.seq >= 0):
            return False
        if type(record.time) is not float or not math.isfinite(record.time):
            return False
        if not all(_number(v) for v in (record.loss, record.loss_used, record.grad_norm,
                                         record.grad_norm_post, record.lr) if v is not None):
            return False
        return (self._floats(record.components) and self._floats(record.scalars)
                and self._stats(record.tensors))

    def _floats(self, values: dict[str, float]) -> bool:
        return (len(values) <= MAX_ENTRIES and self._names.issuperset(values)
                and all(_number(v) for v in values.values()))

    def _stats(self, tensors: dict[str, TensorStats]) -> bool:
        if len(tensors) > MAX_ENTRIES or not self._names.issuperset(tensors):
            return False
        return all(type(t) is TensorStats and t.dtype in self._dtypes
                   and all(_count(c) for c in (t.count, t.nan, t.posinf, t.neginf))
                   and all(_number(v) for v in (t.min, t.max, t.mean, t.absmax))
                   and (t.headroom is None or _number(t.headroom)) for t in tensors.values())


def _int(value: Any) -> bool:
    return type(value) is int and INT_MIN <= value <= INT_MAX


def _count(value: Any) -> bool:
    return type(value) is int and 0 <= value <= INT_MAX


def _number(value: Any) -> bool:
    """A float (NaN and ±Inf included: the wire carries them) or an int in range."""
    return type(value) is float or _int(value)
