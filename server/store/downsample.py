"""Downsampling that keeps extremes: M4 per pixel column, with non-finite values kept too.

A chart ``buckets`` pixels wide cannot show more than a few points per pixel column, so a long
series is cut into at most ``buckets`` step ranges ("columns") and each keeps only the points
that decide what its column looks like (Jugel et al., "M4", VLDB 2014): the **first** and
**last** point (the line into and out of the column) and the points with the **smallest** and
**largest** value. A single spike among a million steps is the largest value of its column, so
it is always drawn — unlike reservoir sampling (TensorBoard's default), which keeps each point
with equal chance.

Non-finite values never vanish: a column that holds NaN, +Inf or -Inf also keeps the first of
each. ``min``/``max`` are taken over finite values only, so an Inf does not hide the finite
spike next to it. Ties go to the earliest step.

The columns (``columns``) divide the steps the range actually holds, [lo, hi]:

* when [lo, hi] touches at least ``buckets`` blocks of ``BLOCK_STEPS`` (1,024) steps, every
  column is a run of whole blocks (the blocks shared out as evenly as ``bucket_range`` shares
  steps; only the first and last column are cut at lo and hi), so the SQLite store answers from
  its block summaries (``trainvitals.server.store.sqlite.blocks``) in ~10,000 rows for 10M points;
* otherwise they are ``min(buckets, hi - lo + 1)`` equal step ranges (``bucket_range``), read
  point by point (at most ``buckets`` × 1,024 points).

``m4`` is the reference in plain Python and the contract of ``Store.series_m4``; ``SQLITE_M4``
computes equal columns inside SQLite, ``postgres.sql.M4`` any columns inside
PostgreSQL, ``sqlite_blocks.block_m4`` block columns from summaries, and the tests hold each to
the reference.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from trainvitals.server.store.blocks import BLOCK_BITS

if TYPE_CHECKING:
    from trainvitals.server.store import SeriesData, Store

__all__ = ["MAX_BUCKETS", "SQLITE_M4", "bucket_of", "bucket_range", "by_blocks", "columns",
           "for_width", "m4"]

MAX_BUCKETS = 10_000  # (step - start) * buckets must stay far inside 64-bit integers


def bucket_of(step: int, start: int, end: int, buckets: int) -> int:
    """The bucket (0 … buckets-1) of ``step`` in [start, end] cut into ``buckets`` ranges."""
    return (step - start) * buckets // (end - start + 1)


def bucket_range(i: int, start: int, end: int, buckets: int) -> tuple[int, int]:
    """The steps [lo, hi] of bucket ``i``: exactly the steps that ``bucket_of`` maps to ``i``."""
    span = end - start + 1
    return (start + -(-i * span // buckets), start + -(-(i + 1) * span // buckets) - 1)


def by_blocks(lo: int, hi: int, buckets: int) -> bool:
    """Whether the columns of held steps [lo, hi] are runs of whole blocks (see the module)."""
    return (hi >> BLOCK_BITS) - (lo >> BLOCK_BITS) + 1 >= buckets


def columns(lo: int, hi: int, buckets: int) -> list[tuple[int, int]]:
    """The columns [first, last step] that M4 cuts held steps [lo, hi] into, in step order.

    They partition [lo, hi]; there are at most ``buckets`` (1 … ``MAX_BUCKETS``) of them.
    """
    if by_blocks(lo, hi, buckets):
        b0, b1 = lo >> BLOCK_BITS, hi >> BLOCK_BITS
        edges = (bucket_range(i, b0, b1, buckets) for i in range(buckets))
        return [(max(lo, first << BLOCK_BITS), min(hi, ((last + 1) << BLOCK_BITS) - 1))
                for first, last in edges]
    n = min(buckets, hi - lo + 1)
    return [bucket_range(i, lo, hi, n) for i in range(n)]


def m4(steps: Sequence[int], values: Sequence[float], *, start: int | None = None,
       end: int | None = None, buckets: int) -> tuple[list[int], list[float]]:
    """The points M4 keeps of (steps, values) within [start, end], in step order: exactly what
    ``Store.series_m4`` must return for one series.

    The held steps of the range, [lo, hi], are cut into ``columns(lo, hi, buckets)``; per
    column: first, last, finite min, finite max, and the first NaN, +Inf and -Inf.
    ``steps`` must be distinct; they need not be sorted.
    """
    inside = sorted((s, v) for s, v in zip(steps, values, strict=True)
                    if (start is None or s >= start) and (end is None or s <= end))
    if not inside:
        return [], []
    starts = [first for first, _ in columns(inside[0][0], inside[-1][0], buckets)]
    groups: dict[int, list[tuple[int, float]]] = {}
    for s, v in inside:
        groups.setdefault(bisect.bisect_right(starts, s), []).append((s, v))
    keep: dict[int, float] = {}
    for points in groups.values():
        for s, v in _picks(points):
            keep[s] = v
    order = sorted(keep)
    return order, [keep[s] for s in order]


def for_width(store: Store, run_id: int, name: str, *, rank: int | None, start: int | None,
              end: int | None, buckets: int) -> list[tuple[SeriesData, bool]]:
    """Each rank's points for a chart ``buckets`` pixels wide, and whether they were thinned.

    A range holding at most 4 points per column comes back whole (M4 could not draw it any
    better); a longer one comes back as its M4 downsample.
    """
    whole = store.series(run_id, name, rank=rank, start=start, end=end, limit=4 * buckets + 1)
    out = []
    for data in whole:
        if len(data.steps) <= 4 * buckets:
            out.append((data, False))
        else:
            (thin,) = store.series_m4(run_id, name, rank=data.rank, start=start, end=end,
                                      buckets=buckets)
            out.append((thin, True))
    return out


def _picks(points: list[tuple[int, float]]) -> list[tuple[int, float]]:
    """The points one bucket keeps (some may repeat)."""
    points = sorted(points)
    finite = [p for p in points if math.isfinite(p[1])]
    out = [points[0], points[-1]]
    if finite:
        out.append(min(finite, key=lambda p: (p[1], p[0])))
        out.append(min(finite, key=lambda p: (-p[1], p[0])))
    for kind in (math.isnan, lambda v: v == math.inf, lambda v: v == -math.inf):
        out.extend([p for p in points if kind(p[1])][:1])
    return out


# Bucket bounds come from bucket_range's formula (integer ceil division), so each correlated
# subquery is a primary-key range scan; a GROUP BY over (step - start) * buckets / span would
# instead sort every point of the range in a temporary B-tree, about twice as slow.
#
# Two passes over each bucket find first, last, lowest and highest. SQLite sorts NULL (our NaN)
# below -Inf, so "lowest" is the first NaN, else the first -Inf, else the finite min; "highest"
# is the first +Inf, else the finite max. Only buckets where one of them is not finite ("odd",
# rare in practice) need more: the finite min and max, and the first -Inf (hidden behind a NaN).
# Parameters: :sid (series id), :start, :span (end - start + 1), :b (buckets).
_W = "series_id = :sid AND step BETWEEN lo AND hi"
_BIG = "1.7976931348623157e308"  # the largest finite double: beyond it lies only Inf
SQLITE_M4 = f"""
WITH RECURSIVE k(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM k WHERE i + 1 < :b),
bucket(lo, hi) AS (SELECT :start + (i * :span + :b - 1) / :b,
                          :start + ((i + 1) * :span + :b - 1) / :b - 1 FROM k),
m(lo, hi, f, l, a, z) AS (SELECT lo, hi,
    (SELECT min(step) FROM points WHERE {_W}),
    (SELECT max(step) FROM points WHERE {_W}),
    (SELECT step FROM points WHERE {_W} ORDER BY value, step LIMIT 1),
    (SELECT step FROM points WHERE {_W} ORDER BY value DESC, step LIMIT 1)
  FROM bucket),
odd(lo, hi) AS (SELECT m.lo, m.hi FROM m
  JOIN points pa ON pa.series_id = :sid AND pa.step = m.a
  JOIN points pz ON pz.series_id = :sid AND pz.step = m.z
  WHERE pa.value IS NULL OR pa.value < -{_BIG} OR pz.value > {_BIG}),
picks(s) AS (SELECT f FROM m UNION SELECT l FROM m UNION SELECT a FROM m UNION SELECT z FROM m
  UNION SELECT (SELECT step FROM points WHERE {_W} AND value BETWEEN -{_BIG} AND {_BIG}
                ORDER BY value, step LIMIT 1) FROM odd
  UNION SELECT (SELECT step FROM points WHERE {_W} AND value BETWEEN -{_BIG} AND {_BIG}
                ORDER BY value DESC, step LIMIT 1) FROM odd
  UNION SELECT (SELECT min(step) FROM points WHERE {_W} AND value < -{_BIG}) FROM odd)
SELECT p.step, p.value FROM picks JOIN points p ON p.series_id = :sid AND p.step = picks.s
ORDER BY p.step
"""
