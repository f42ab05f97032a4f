"""Block summaries and M4's columns, in plain Python: merging summaries is exact, and the
columns partition the range, are whole blocks when the range spans enough of them, and never
outnumber the pixels."""

from __future__ import annotations

import functools
import itertools
import math
import random

from hypothesis import given
from hypothesis import strategies as st

from trainvitals.server.store.blocks import (
    BLOCK_BITS,
    BLOCK_STEPS,
    Summary,
    fold,
    fold_columns,
    merge,
    picks,
    summarise,
)
from trainvitals.server.store.downsample import MAX_BUCKETS, bucket_range, by_blocks, columns, m4

NAN, INF = math.nan, math.inf

_values = st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=64),
                    st.sampled_from([0.0, -0.0, 1.0, 1.0, -1.0, NAN, INF, -INF]))
_points = st.dictionaries(st.integers(-5000, 5000), _values, min_size=1, max_size=80)


def expected(points: dict[int, float]) -> dict[int, float]:
    """What M4 keeps of one column, from the downsample reference."""
    steps, values = m4(list(points), list(points.values()), buckets=1)
    return dict(zip(steps, values, strict=True))


def same(a: dict[int, float], b: dict[int, float]) -> bool:
    return a.keys() == b.keys() and all(
        a[k] == b[k] or (math.isnan(a[k]) and math.isnan(b[k])) for k in a)


def test_a_summary_holds_first_last_finite_extremes_and_the_first_of_each_non_finite_kind(
        ) -> None:
    s = summarise([(7, 2.0), (3, NAN), (4, INF), (5, -1.0), (6, -1.0), (8, -INF), (9, INF),
                   (10, 5.0), (11, NAN)])
    assert s == Summary(size=9, first_step=3, first_value=None, last_step=11, last_value=None,
                        min_step=5, min_value=-1.0, max_step=10, max_value=5.0, nan_step=3,
                        pinf_step=4, ninf_step=8)
    only_inf = summarise([(1, INF), (2, -INF)])
    assert (only_inf.min_step, only_inf.min_value, only_inf.max_value) == (None, None, None)
    assert same(picks(only_inf), {1: INF, 2: -INF})


@given(points=_points)
def test_picks_of_a_summary_are_what_the_reference_keeps(points: dict[int, float]) -> None:
    assert same(picks(summarise(points.items())), expected(points))


@given(points=_points, cuts=st.lists(st.integers(-5000, 5000), max_size=6),
       order=st.randoms())
def test_merging_summaries_of_parts_in_any_order_equals_summarising_the_whole(
        points: dict[int, float], cuts: list[int], order: random.Random) -> None:
    edges = sorted(set(cuts))
    parts: dict[int, list[tuple[int, float]]] = {}
    for s, v in points.items():
        parts.setdefault(sum(s > e for e in edges), []).append((s, v))
    pieces = [summarise(parts[k]) for k in sorted(parts)]
    whole = summarise(points.items())
    assert fold(pieces) == whole  # in step order, the fast way
    shuffled = list(pieces)
    order.shuffle(shuffled)
    assert functools.reduce(merge, shuffled) == whole  # NaN values are None: == compares them


@given(points=_points, ends=st.lists(st.integers(-5000, 5000), max_size=8))
def test_folding_pieces_by_column_summarises_each_column_that_holds_points(
        points: dict[int, float], ends: list[int]) -> None:
    column_ends = sorted(set(ends) | {5000})
    pieces = [summarise([(s, v)]) for s, v in sorted(points.items())]  # one point each
    columns: dict[int, list[tuple[int, float]]] = {}
    for s, v in points.items():
        columns.setdefault(next(e for e in column_ends if s <= e), []).append((s, v))
    want = [summarise(columns[e]) for e in sorted(columns)]
    assert fold_columns(pieces, column_ends) == want


@given(lo=st.integers(-(2**40), 2**40), width=st.integers(0, 2**24),
       buckets=st.integers(1, MAX_BUCKETS))
def test_columns_partition_the_range_and_are_whole_blocks_when_they_can_be(
        lo: int, width: int, buckets: int) -> None:
    hi = lo + width
    cols = columns(lo, hi, buckets)
    assert 1 <= len(cols) <= buckets
    assert cols[0][0] == lo and cols[-1][1] == hi
    assert all(a[1] + 1 == b[0] for a, b in itertools.pairwise(cols))
    assert all(first <= last for first, last in cols)
    if by_blocks(lo, hi, buckets):
        assert all(first % BLOCK_STEPS == 0 for first, _ in cols[1:])  # inner edges
        assert all((last + 1) % BLOCK_STEPS == 0 for _, last in cols[:-1])
        blocks = (hi >> BLOCK_BITS) - (lo >> BLOCK_BITS) + 1
        assert len(cols) == buckets <= blocks
    else:
        n = min(buckets, width + 1)
        assert cols == [bucket_range(i, lo, hi, n) for i in range(n)]


def test_ten_million_steps_in_two_thousand_columns_are_five_blocks_each() -> None:
    cols = columns(0, 9_999_999, 2000)
    widths = {last - first + 1 for first, last in cols[:-1]}
    assert len(cols) == 2000 and widths <= {4 * BLOCK_STEPS, 5 * BLOCK_STEPS}
    assert not by_blocks(0, 999_999, 2000)  # 977 blocks: read point by point
    assert columns(0, 999_999, 2000) == [bucket_range(i, 0, 999_999, 2000) for i in range(2000)]
