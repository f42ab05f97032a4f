"""Per run and rank, how many steps the store holds and their first and last time.

The runs list shows each run's step count and first/last step time; counting them from the
``steps`` table is a scan of every step (seconds on a run of a million). Both stores keep a
``run_steps`` row per (run, rank) instead — ``steps``, ``first_time``, ``last_time`` over that
rank's rows in ``steps`` — written by the store in the same transaction as the step rows, so it
is exact after a crash as after a commit.

A write collects what it did to ``steps`` in ``PendingSteps``: rows inserted (a step not held
before; a resent record never gets here, the store deduplicates it first) and rows whose time
was replaced (a resumed run writing a step again). ``merge`` then folds that into the stored
row. Counting is exact: only inserted rows add. The min and max stay exact without a scan
unless a replaced time was the stored extreme (then ``merge`` says to count that rank again
from ``steps``, which is rare: a run restarted from step 0, or a clock going backwards).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

__all__ = ["Pending", "PendingSteps", "Summary", "merge"]

Summary = tuple[int, float, float]  # steps, first_time, last_time of one (run, rank)


@dataclass
class Pending:
    """What one write did to one (run, rank)'s rows in ``steps``."""

    added: int = 0  # rows inserted
    lo: float = math.inf  # the lowest and highest time written (inserted or replacing)
    hi: float = -math.inf
    gone_lo: float = math.inf  # the lowest and highest time replaced by another
    gone_hi: float = -math.inf

    @property
    def replaced(self) -> bool:
        return self.gone_lo <= self.gone_hi


class PendingSteps:
    """The (run, rank)s one write touches, merged into ``run_steps`` before it commits."""

    def __init__(self) -> None:
        self._pending: dict[tuple[int, int], Pending] = {}

    def _of(self, run_id: int, rank: int) -> Pending:
        p = self._pending.get((run_id, rank))
        if p is None:
            p = self._pending[run_id, rank] = Pending()
        return p

    def added(self, run_id: int, rank: int, time: float) -> None:
        """A row of ``steps`` was inserted."""
        p = self._of(run_id, rank)
        p.added += 1
        p.lo, p.hi = min(p.lo, time), max(p.hi, time)

    def replaced(self, run_id: int, rank: int, old: float, new: float) -> None:
        """A row's time ``old`` was replaced by ``new`` (call only when they differ)."""
        p = self._of(run_id, rank)
        p.lo, p.hi = min(p.lo, new), max(p.hi, new)
        p.gone_lo, p.gone_hi = min(p.gone_lo, old), max(p.gone_hi, old)

    def items(self) -> Iterator[tuple[tuple[int, int], Pending]]:
        """Each touched (run id, rank) with what was done to it, in key order."""
        for key in sorted(self._pending):
            yield key, self._pending[key]

    def __bool__(self) -> bool:
        return bool(self._pending)

    def clear(self) -> None:
        """Forget what was collected (after a flush, or when the write rolled back)."""
        self._pending.clear()


def merge(stored: Summary | None, p: Pending) -> Summary | None:
    """The (run, rank)'s summary after the write, or None if it must be counted from ``steps``.

    Every time held now was held before or written now, so the new min is at least
    ``min(stored first, lowest written)``; it is exactly that unless a replaced time was that
    low (the row holding it may be gone). The same holds for the max.
    """
    if stored is None:
        if p.replaced or p.added == 0:  # rows replaced, yet no summary: count them
            return None
        return p.added, p.lo, p.hi
    count, first, last = stored
    lo, hi = min(first, p.lo), max(last, p.hi)
    if p.gone_lo <= lo or p.gone_hi >= hi:
        return None
    return count + p.added, lo, hi
