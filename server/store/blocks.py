"""Block summaries: what M4 keeps of 1,024 consecutive steps, so long ranges need not be read.

A series' steps fall into fixed blocks of ``BLOCK_STEPS`` = 2**``BLOCK_BITS`` steps (block =
``step >> BLOCK_BITS``; negative steps fall into negative blocks). A block's ``Summary`` holds
everything M4 (``downsample``) keeps of a pixel column made of whole blocks:
the first and last point, the lowest and highest finite value with the first step reaching
each, and the first step of each non-finite kind (NaN, +Inf, -Inf). Summaries of disjoint sets
of points ``merge`` exactly, so a column of k whole blocks is answered from k rows instead of
k × 1,024 points.

Values are as SQLite stores them: NaN is ``None`` (``summarise`` takes ``math.nan`` too).
``min_value``/``max_value`` are finite or ``None`` (no finite value in the block). This module
is pure; the SQLite side is ``trainvitals.server.store.sqlite.blocks``.
"""

from __future__ import annotations

import bisect
import math
import operator
from collections.abc import Iterable, Sequence
from typing import NamedTuple, cast

__all__ = ["BLOCK_BITS", "BLOCK_STEPS", "Summary", "fold", "fold_columns", "merge", "picks",
           "summarise"]

BLOCK_BITS = 10
BLOCK_STEPS = 1 << BLOCK_BITS

_INF = math.inf
_VALUE = operator.itemgetter(1)  # of a (step, value) point


class Summary(NamedTuple):
    """M4's facts about a set of points (one block, part of one, or several merged)."""

    size: int  # how many points
    first_step: int
    first_value: float | None  # None: NaN
    last_step: int
    last_value: float | None
    min_step: int | None  # the lowest finite value and the first step that has it
    min_value: float | None  # None: no finite value
    max_step: int | None  # the highest finite value and the first step that has it
    max_value: float | None
    nan_step: int | None  # the first NaN, +Inf and -Inf (None: none of that kind)
    pinf_step: int | None
    ninf_step: int | None


def summarise(points: Iterable[tuple[int, float | None]]) -> Summary:
    """The summary of (step, value) points with distinct steps, in any order (at least one)."""
    ordered = sorted(points)  # distinct steps: the values are never compared
    # neither NaN (None or nan) nor ±Inf; v - v is 0 exactly for finite floats
    finite = cast("list[tuple[int, float]]",
                  [p for p in ordered if p[1] is not None and p[1] - p[1] == 0.0])
    lo_s = lo_v = hi_s = hi_v = nan = pinf = ninf = None
    if finite:  # min and max return the first of equal values: the earliest step
        lo_s, lo_v = min(finite, key=_VALUE)
        hi_s, hi_v = max(finite, key=_VALUE)
    if len(finite) < len(ordered):
        for s, v in ordered:
            if v is None or v != v:
                nan = s if nan is None else nan
            elif v == _INF:
                pinf = s if pinf is None else pinf
            elif v == -_INF:
                ninf = s if ninf is None else ninf
    (s0, v0), (s1, v1) = ordered[0], ordered[-1]
    return Summary(len(ordered), s0, _stored(v0), s1, _stored(v1), lo_s, lo_v, hi_s, hi_v, nan,
                   pinf, ninf)


def merge(a: Summary, b: Summary) -> Summary:
    """The summary of the union of two disjoint sets of points (``a`` and ``b`` in any order).

    ``sqlite_blocks.UPSERT`` computes the same in SQL; ties go to the earlier step.
    """
    first = a if a.first_step < b.first_step else b
    last = a if a.last_step > b.last_step else b
    low = a if _lowest_first(a) < _lowest_first(b) else b
    high = a if _highest_first(a) < _highest_first(b) else b
    return Summary(a.size + b.size, first.first_step, first.first_value, last.last_step,
                   last.last_value, low.min_step, low.min_value, high.max_step, high.max_value,
                   _first(a.nan_step, b.nan_step), _first(a.pinf_step, b.pinf_step),
                   _first(a.ninf_step, b.ninf_step))


def fold(pieces: Sequence[Summary]) -> Summary:
    """``merge`` of pieces given in step order (each ends before the next begins), fast.

    This is the query's inner loop (~10,000 block rows per chart), so it keeps its state in
    locals instead of building a tuple per merge.
    """
    (n, fs, fv, ls, lv, lo_s, lo_v, hi_s, hi_v, nan, pinf, ninf) = pieces[0]
    for (count, _, _, last_s, last_v, low_s, low_v, high_s, high_v, nan_s, pinf_s,
         ninf_s) in pieces[1:]:
        n += count
        ls, lv = last_s, last_v
        if low_v is not None and (lo_v is None or low_v < lo_v):  # a tie keeps the earlier
            lo_s, lo_v = low_s, low_v
        if high_v is not None and (hi_v is None or high_v > hi_v):
            hi_s, hi_v = high_s, high_v
        nan = nan_s if nan is None else nan
        pinf = pinf_s if pinf is None else pinf
        ninf = ninf_s if ninf is None else ninf
    return Summary(n, fs, fv, ls, lv, lo_s, lo_v, hi_s, hi_v, nan, pinf, ninf)


def fold_columns(pieces: Iterable[Summary], ends: Sequence[int]) -> list[Summary]:
    """``fold`` of the pieces of each column, for the columns that have any.

    ``pieces`` come in step order and none straddles a column's end; ``ends`` are the
    columns' last steps, ascending.
    """
    out: list[Summary] = []
    run: list[Summary] = []  # the pieces of the column being collected
    end = 0
    for piece in pieces:
        if run and piece[1] > end:  # piece[1]: its first step, in a later column
            out.append(fold(run))
            run = []
        if not run:
            end = ends[bisect.bisect_left(ends, piece[1])]
        run.append(piece)
    if run:
        out.append(fold(run))
    return out


def picks(s: Summary) -> dict[int, float]:
    """Step → value of the points M4 keeps of the summarised set (NaN as ``math.nan``)."""
    out = {s.first_step: _value(s.first_value), s.last_step: _value(s.last_value)}
    if s.min_step is not None and s.min_value is not None:
        out[s.min_step] = s.min_value
    if s.max_step is not None and s.max_value is not None:
        out[s.max_step] = s.max_value
    for step, value in ((s.nan_step, math.nan), (s.pinf_step, _INF), (s.ninf_step, -_INF)):
        if step is not None:
            out[step] = value
    return out


def _lowest_first(s: Summary) -> tuple[bool, float, int]:
    """Orders summaries by their lowest finite point (value, then step); none sorts last."""
    if s.min_value is None or s.min_step is None:
        return (True, 0.0, 0)
    return (False, s.min_value, s.min_step)


def _highest_first(s: Summary) -> tuple[bool, float, int]:
    """Orders summaries by their highest finite point (value descending, then step)."""
    if s.max_value is None or s.max_step is None:
        return (True, 0.0, 0)
    return (False, -s.max_value, s.max_step)


def _first(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else min(a, b)


def _stored(v: float | None) -> float | None:
    return None if v is None or v != v else v


def _value(v: float | None) -> float:
    return math.nan if v is None else v
