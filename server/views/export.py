"""A run as CSV: one row per (rank, step), one column per series, then the clip event.

Written in chunks of steps, so a run of millions of steps streams out in constant memory.
Values are Python's ``repr`` of the float: exact when read back with ``float()``, and NaN,
+Inf and -Inf appear as themselves (``nan``, ``inf``, ``-inf``). An empty cell means the
series was not reported at that step — never that it was NaN.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator

from trainvitals.server.store import RunRow, Store

__all__ = ["CHUNK", "csv_chunks", "csv_value"]

CHUNK = 10_000  # points per series per query
CLIP_COLUMNS = ("clip_raw", "clip_threshold", "clip_action", "clip_reason")


def csv_value(value: float) -> str:
    """A float as CSV text that round-trips: ``repr`` (``nan``, ``inf``, ``-inf`` included)."""
    return repr(float(value))


def csv_chunks(store: Store, run: RunRow, *, chunk: int = CHUNK) -> Iterator[str]:
    """The CSV text of ``run``, in pieces (header first), reading ``chunk`` points at a time."""
    infos = store.series_list(run.id)
    names = sorted({s.name for s in infos})
    yield _line(["rank", "step", *names, *CLIP_COLUMNS])
    for rank in sorted({s.rank for s in infos}):
        yield from _rank_chunks(store, run.id, rank, names, chunk)


def _rank_chunks(store: Store, run_id: int, rank: int, names: list[str],
                 chunk: int) -> Iterator[str]:
    start: int | None = None
    while True:
        got = {name: store.series(run_id, name, rank=rank, start=start, limit=chunk)
               for name in names}
        # Rows are complete up to the smallest last step of the series that filled a chunk.
        full = [d[0].steps[-1] for d in got.values() if d and len(d[0].steps) == chunk]
        upto = min(full) if full else None
        rows: dict[int, dict[str, str]] = {}
        for name, found in got.items():
            for data in found:
                for step, value in zip(data.steps, data.values, strict=True):
                    if upto is None or step <= upto:
                        rows.setdefault(step, {})[name] = csv_value(value)
        for clip in store.clips(run_id, start=start, end=upto):
            if clip.rank == rank and (upto is None or clip.step <= upto):
                rows.setdefault(clip.step, {}).update(
                    clip_raw=csv_value(clip.raw), clip_threshold=csv_value(clip.threshold),
                    clip_action=clip.action, clip_reason=clip.reason)
        columns = [*names, *CLIP_COLUMNS]
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        for step in sorted(rows):
            writer.writerow([rank, step, *(rows[step].get(c, "") for c in columns)])
        yield out.getvalue()
        if upto is None:
            return
        start = upto + 1


def _line(cells: list[str]) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerow(cells)
    return out.getvalue()
