"""Block summaries in SQLite: kept with every write, rebuilt from points, read for long charts.

``point_blocks`` (``trainvitals.server.store.sqlite.schema``) holds one ``Summary`` (see
``store.blocks``) per series and block of ``BLOCK_STEPS`` steps. The store keeps it
exact in the same transaction as the points: new points are summarised per block and merged into
the stored row (``UPSERT``, cheap for appends, the common case); a block in which a step was
written again is recomputed from ``points``. Anything that writes ``points`` without the store
(a bulk import, a benchmark's generator) must call ``rebuild`` for the series it wrote.

``block_m4`` answers M4 for columns made of whole blocks (``downsample.columns``) from the
summaries alone, reading raw points only where the requested range cuts a block.
"""

from __future__ import annotations

import itertools
import sqlite3
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence

from trainvitals.server.store.blocks import BLOCK_BITS, Summary, fold_columns, picks, summarise
from trainvitals.server.store.codec import STEP_MAX, STEP_MIN

__all__ = ["PendingBlocks", "block_m4", "rebuild", "recompute"]

_FIELDS = ("count, first_step, first_value, last_step, last_value, min_step, min_value, "
           "max_step, max_value, nan_step, pinf_step, ninf_step")

# Merge new points' summary (excluded) into the stored one, as blocks.merge does. In DO UPDATE,
# every bare column name is the stored row's value before this update.
_LOWER = ("excluded.min_value IS NOT NULL AND (min_value IS NULL OR excluded.min_value < "
          "min_value OR (excluded.min_value = min_value AND excluded.min_step < min_step))")
_HIGHER = ("excluded.max_value IS NOT NULL AND (max_value IS NULL OR excluded.max_value > "
           "max_value OR (excluded.max_value = max_value AND excluded.max_step < max_step))")
UPSERT = f"""
INSERT INTO point_blocks (series_id, block, {_FIELDS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)
ON CONFLICT (series_id, block) DO UPDATE SET
  count = count + excluded.count,
  first_step = min(first_step, excluded.first_step),
  first_value = CASE WHEN excluded.first_step < first_step THEN excluded.first_value
                ELSE first_value END,
  last_step = max(last_step, excluded.last_step),
  last_value = CASE WHEN excluded.last_step > last_step THEN excluded.last_value
               ELSE last_value END,
  min_step = CASE WHEN {_LOWER} THEN excluded.min_step ELSE min_step END,
  min_value = CASE WHEN {_LOWER} THEN excluded.min_value ELSE min_value END,
  max_step = CASE WHEN {_HIGHER} THEN excluded.max_step ELSE max_step END,
  max_value = CASE WHEN {_HIGHER} THEN excluded.max_value ELSE max_value END,
  nan_step = coalesce(min(nan_step, excluded.nan_step), nan_step, excluded.nan_step),
  pinf_step = coalesce(min(pinf_step, excluded.pinf_step), pinf_step, excluded.pinf_step),
  ninf_step = coalesce(min(ninf_step, excluded.ninf_step), ninf_step, excluded.ninf_step)
"""
_REPLACE = f"INSERT OR REPLACE INTO point_blocks (series_id, block, {_FIELDS}) VALUES " \
           "(?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
_POINTS = "SELECT step, value FROM points WHERE series_id=? AND step BETWEEN ? AND ?"
_BLOCKS = (f"SELECT {_FIELDS} FROM point_blocks WHERE series_id=? AND block BETWEEN ? AND ? "
           "ORDER BY block")


class PendingBlocks:
    """The blocks one write touches: summarised and stored just before it commits (``flush``)."""

    def __init__(self) -> None:
        self._new: defaultdict[tuple[int, int], list[tuple[int, float]]] = defaultdict(list)
        self._rewritten: set[tuple[int, int]] = set()

    def added(self, rows: Iterable[tuple[int, int, float]]) -> None:
        """(series id, step, value) points that were not stored before."""
        new = self._new
        for series_id, step, value in rows:
            new[series_id, step >> BLOCK_BITS].append((step, value))

    def added_columns(self, series_ids: Sequence[int], steps: Sequence[int],
                      columns: Sequence[Sequence[float]]) -> None:
        """New points as columns: series ``series_ids[j]`` has ``columns[j][i]`` at
        ``steps[i]`` (what ``added`` takes as rows, without a tuple per point)."""
        new = self._new
        blocks = {step >> BLOCK_BITS for step in steps}
        if len(blocks) == 1:  # the common case: the steps of one commit lie in one block
            (block,) = blocks
            for series_id, column in zip(series_ids, columns, strict=True):
                new[series_id, block] += zip(steps, column, strict=True)
            return
        for series_id, column in zip(series_ids, columns, strict=True):
            for step, value in zip(steps, column, strict=True):
                new[series_id, step >> BLOCK_BITS].append((step, value))

    def rewritten(self, rows: Iterable[tuple[int, int, float]]) -> None:
        """Points of which some replaced stored ones: their blocks are recomputed."""
        self._rewritten.update((series_id, step >> BLOCK_BITS) for series_id, step, _ in rows)

    def flush(self, conn: sqlite3.Connection) -> None:
        """Store the summaries (inside the write's transaction) and forget them."""
        conn.executemany(UPSERT, [(*key, *summarise(points)) for key, points in self._new.items()
                                  if key not in self._rewritten])
        for series_id, block in self._rewritten:
            recompute(conn, series_id, block)
        self.clear()

    def clear(self) -> None:
        """Forget what was collected (the write failed and rolled back)."""
        self._new.clear()
        self._rewritten.clear()


def recompute(conn: sqlite3.Connection, series_id: int, block: int) -> None:
    """Summarise one block afresh from its points."""
    rows = conn.execute(_POINTS, (series_id, *_steps_of(block))).fetchall()
    if rows:
        conn.execute(_REPLACE, (series_id, block, *summarise(rows)))
    else:
        conn.execute("DELETE FROM point_blocks WHERE series_id=? AND block=?", (series_id, block))


def _steps_of(block: int) -> tuple[int, int]:
    return block << BLOCK_BITS, min(STEP_MAX, ((block + 1) << BLOCK_BITS) - 1)


# ---------------------------------------------------------------------------------- rebuild
# From points, per series and window of _WINDOW blocks: one GROUP BY pass for what plain
# aggregates give, then one UPDATE for the values at the first and last step and the first step
# reaching the min and max (what blocks.summarise computes). NULL is NaN; beyond _BIG lies Inf.
_WINDOW = 1024  # blocks per statement (~1M steps): progress for big files, bounded sort
_BIG = "1.7976931348623157e308"
_FINITE = f"value BETWEEN -{_BIG} AND {_BIG}"
_GROUP = f"""
INSERT INTO point_blocks (series_id, block, count, first_step, last_step, min_value, max_value,
                          nan_step, pinf_step, ninf_step)
SELECT series_id, step >> {BLOCK_BITS}, count(*), min(step), max(step),
  min(CASE WHEN {_FINITE} THEN value END), max(CASE WHEN {_FINITE} THEN value END),
  min(CASE WHEN value IS NULL THEN step END), min(CASE WHEN value > {_BIG} THEN step END),
  min(CASE WHEN value < -{_BIG} THEN step END)
FROM points WHERE series_id = :sid AND step BETWEEN :lo AND :hi GROUP BY step >> {BLOCK_BITS}
"""
_AT = "SELECT p.{what} FROM points p WHERE p.series_id = :sid AND p.step"
_IN_BLOCK = "BETWEEN b.first_step AND b.last_step"
_FILL = f"""
UPDATE point_blocks AS b SET
  first_value = ({_AT.format(what="value")} = b.first_step),
  last_value = ({_AT.format(what="value")} = b.last_step),
  min_step = ({_AT.format(what="step")} {_IN_BLOCK} AND p.value = b.min_value
              ORDER BY p.step LIMIT 1),
  max_step = ({_AT.format(what="step")} {_IN_BLOCK} AND p.value = b.max_value
              ORDER BY p.step LIMIT 1)
WHERE b.series_id = :sid AND b.block BETWEEN :lo >> {BLOCK_BITS} AND :hi >> {BLOCK_BITS}
"""


def rebuild(conn: sqlite3.Connection, series_ids: Iterable[int] | None = None,
            progress: Callable[[int], object] | None = None) -> int:
    """Summarise every block of the given series (all series if None) afresh from ``points``.

    Runs inside the caller's transaction. ``progress`` gets the number of points summarised so
    far after each window of about a million steps. Returns that number.
    """
    ids = ([i for (i,) in conn.execute("SELECT id FROM series ORDER BY id")]
           if series_ids is None else list(series_ids))
    done = 0
    for series_id in ids:
        conn.execute("DELETE FROM point_blocks WHERE series_id=?", (series_id,))
        step = _first_step_from(conn, series_id, None)
        while step is not None:
            lo = step >> BLOCK_BITS << BLOCK_BITS
            hi = min(STEP_MAX, lo + (_WINDOW << BLOCK_BITS) - 1)
            window = {"sid": series_id, "lo": lo, "hi": hi}
            conn.execute(_GROUP, window)
            conn.execute(_FILL, window)
            done += conn.execute("SELECT coalesce(sum(count), 0) FROM point_blocks WHERE "
                                 "series_id=? AND block BETWEEN ? AND ?",
                                 (series_id, lo >> BLOCK_BITS, hi >> BLOCK_BITS)).fetchone()[0]
            if progress is not None:
                progress(done)
            step = None if hi == STEP_MAX else _first_step_from(conn, series_id, hi + 1)
    return done


def _first_step_from(conn: sqlite3.Connection, series_id: int, step: int | None) -> int | None:
    """The series' first step at or after ``step`` (its first step if None)."""
    row = conn.execute("SELECT min(step) FROM points WHERE series_id=? AND step>=?",
                       (series_id, STEP_MIN if step is None else step)).fetchone()
    return None if row is None else row[0]


# ------------------------------------------------------------------------------------ reads


def block_m4(conn: sqlite3.Connection, series_id: int, columns: list[tuple[int, int]],
             within: tuple[int, int]) -> tuple[list[int], list[float]]:
    """M4 of one series over ``columns`` whose inner edges are block edges, from summaries.

    ``columns`` (``downsample.columns``) span the held steps [lo, hi] of the requested range
    ``within`` = (start, end). A block that the range cuts (only the first and last can be) is
    summarised from its points; every other block's row is read as stored.
    """
    lo, hi = columns[0][0], columns[-1][1]
    b0, b1 = lo >> BLOCK_BITS, hi >> BLOCK_BITS
    whole_from = b0 if _steps_of(b0)[0] >= within[0] else b0 + 1
    whole_to = b1 if _steps_of(b1)[1] <= within[1] else b1 - 1
    head = whole_from > b0  # the range starts inside block b0 (and may end there too)
    tail = whole_to < b1 and not (head and b1 == b0)  # it ends inside block b1
    pieces: list[Iterable[Summary]] = []
    if head:
        pieces.append([_summary(conn, series_id, lo, min(hi, _steps_of(b0)[1]))])
    if whole_from <= whole_to:  # rows are used as they come: no list of 10,000 to collect
        pieces.append(conn.execute(_BLOCKS, (series_id, whole_from, whole_to)))
    if tail:
        pieces.append([_summary(conn, series_id, max(lo, _steps_of(b1)[0]), hi)])
    steps: list[int] = []
    values: list[float] = []
    ends = [last for _, last in columns]
    for column in fold_columns(itertools.chain.from_iterable(pieces), ends):
        kept = picks(column)
        for step in sorted(kept):
            steps.append(step)
            values.append(kept[step])
    return steps, values


def _summary(conn: sqlite3.Connection, series_id: int, lo: int, hi: int) -> Summary:
    return summarise(conn.execute(_POINTS, (series_id, lo, hi)).fetchall())
