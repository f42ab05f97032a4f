"""Long runs: a 10,000,000-point series downsampled (M4) to 2,000 pixel columns, cold and warm.

The store file is built once, directly in the real schema (``SCHEMA`` from
``store.sqlite.schema``), and cached in ``bench/.data/longrun-<N>/`` (gitignored). The
series is a noisy decaying loss with one upward spike in each of 200 pixel columns, one
downward dip in each of 200 others, and NaN, +Inf and -Inf at a few steps. Timed:

* ``SQLiteStore.series_m4`` in this process — cold (the file's pages dropped from the OS cache
  with ``posix_fadvise(DONTNEED)``, a new store and connection) and warm (repeated);
* the REST call ``GET /api/runs/{id}/series?name=loss&buckets=2000`` of a ``trainvitals serve``
  subprocess on that data directory, first call after start-up (cold) and repeated (warm);
* for scale, reading the whole series without downsampling (``SQLiteStore.series``).

Every spike and dip must come back exactly (step and value), and so must each non-finite kind.

    .venv/bin/python bench/longrun.py            # 10M points (first run builds the file)
    .venv/bin/python bench/longrun.py --quick    # 200k points in a temp dir
"""

from __future__ import annotations

import argparse
import bisect
import json
import math
import os
import random
import sqlite3
import tempfile
import time
from pathlib import Path

import httpx
from common import (
    DATA_DIR,
    LoadMeter,
    ServerProcess,
    fill_points,
    fmt,
    header,
    note,
    percentile,
    table,
)

from trainvitals.server import SQLiteStore
from trainvitals.server.store.downsample import columns
from trainvitals.server.store.sqlite.blocks import rebuild
from trainvitals.server.store.sqlite.schema import SCHEMA, SCHEMA_VERSION

TARGET_MS = 50.0
RUN, SERIES = "longrun", "loss"
SPIKES = 200  # upward spikes, each alone in its pixel column; as many downward dips
NONFINITE = {3_000_001: math.nan, 6_000_001: math.inf, 9_000_001: -math.inf}


def spikes(n: int, buckets: int) -> dict[int, float]:
    """Step → value of every spike and dip, each in an M4 column of its own (the columns
    ``series_m4`` cuts steps 0 … n-1 into: whole blocks of 1,024 steps for 10M points)."""
    rng = random.Random(7)
    cols = columns(0, n - 1, buckets)
    out = {}
    for k, col in enumerate(rng.sample(range(len(cols)), 2 * SPIKES)):
        first, last = cols[col]
        out[rng.randint(first, last)] = (50.0 + k) if k < SPIKES else -(50.0 + k)
    return out


def nonfinite(n: int) -> dict[int, float]:
    """Where NaN, +Inf and -Inf sit (scaled to the series length)."""
    return {int(s * n / 10_000_000): v for s, v in NONFINITE.items()}


def build(db: Path, n: int, buckets: int) -> None:
    """The store file: the real schema, one run, one series of ``n`` points."""
    db.parent.mkdir(parents=True, exist_ok=True)
    tmp = db.with_suffix(".building")
    tmp.unlink(missing_ok=True)
    special = {**spikes(n, buckets), **nonfinite(n)}
    started = time.monotonic()
    with sqlite3.connect(tmp) as conn:
        conn.execute("PRAGMA journal_mode=OFF")
        conn.execute("PRAGMA synchronous=OFF")
        conn.executescript(SCHEMA)
        conn.execute("INSERT INTO meta VALUES ('schema_version', ?)", (SCHEMA_VERSION,))
        now = time.time()
        conn.execute("INSERT INTO runs(id, name, created, updated, status, last_step) "
                     "VALUES (1, ?, ?, ?, 'finished', ?)", (RUN, now, now, n - 1))
        conn.execute("INSERT INTO streams(run_id, rank, session) VALUES (1, 0, 'bench')")
        conn.execute("INSERT INTO series(id, run_id, rank, name) VALUES (1, 1, 0, ?)", (SERIES,))
        fill_points(conn, 1, n)
        conn.executemany("UPDATE points SET value=? WHERE series_id=1 AND step=?",
                         [(None if math.isnan(v) else v, s)  # NULL is how NaN is stored
                          for s, v in special.items()])
        filled = time.monotonic()
        rebuild(conn, [1])  # the block summaries the store keeps with every write
    tmp.rename(db)
    note(f"built {db} ({n:,} points) in {time.monotonic() - started:.0f} s, of which "
         f"{time.monotonic() - filled:.0f} s summarising its blocks")


def ensure(db: Path, n: int, buckets: int) -> None:
    """Build the file unless a complete one of this schema version is cached."""
    if db.exists():
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
            version = conn.execute("SELECT value FROM meta WHERE key='schema_version'"
                                   ).fetchone()
            count = conn.execute("SELECT max(step) FROM points WHERE series_id=1").fetchone()
        if version and int(version[0]) == SCHEMA_VERSION and count[0] == n - 1:
            return
        note(f"{db} is stale; rebuilding")
        db.unlink()
    build(db, n, buckets)


def drop_cache(db: Path) -> None:
    """Evict the file's pages from the OS page cache (clean pages; no root needed)."""
    for path in (db, db.with_name(db.name + "-wal")):
        if path.exists():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def check(steps: list[int], values: list[float], expected: dict[int, float]) -> int:
    """How many of the expected points are missing from the answer (NaN matches NaN)."""
    got = dict(zip(steps, values, strict=True))
    missing = 0
    for step, value in expected.items():
        have = got.get(step)
        if have is None or not (have == value or (math.isnan(value) and math.isnan(have))):
            missing += 1
    return missing


def time_store(db: Path, n: int, buckets: int, warm: int, cold: int,
               expected: dict[int, float]) -> list[list[str]]:
    """series_m4 in-process, cold and warm; plus the whole series read for scale."""
    rows = []
    cold_ms, answer = [], None
    for _ in range(cold):
        store = SQLiteStore(db)
        store.open()  # as the server does at start-up (its writer connection stays open)
        drop_cache(db)
        t0 = time.perf_counter()
        (answer,) = store.series_m4(1, SERIES, buckets=buckets)
        cold_ms.append(1e3 * (time.perf_counter() - t0))
        store.close()
    assert answer is not None
    missing = check(answer.steps, answer.values, expected)
    store = SQLiteStore(db)
    store.open()
    store.series_m4(1, SERIES, buckets=buckets)
    warm_ms = []
    for _ in range(warm):
        t0 = time.perf_counter()
        store.series_m4(1, SERIES, buckets=buckets)
        warm_ms.append(1e3 * (time.perf_counter() - t0))
    kept = f"{len(expected) - missing}/{len(expected)}"
    rows.append(_row("SQLiteStore.series_m4 (in process)", "cold", cold_ms, len(answer.steps),
                     kept))
    rows.append(_row("SQLiteStore.series_m4 (in process)", "warm", warm_ms, len(answer.steps),
                     kept))
    rows.append(time_zoom(store, n, buckets, warm, expected))
    t0 = time.perf_counter()
    (whole,) = store.series(1, SERIES)
    rows.append(_row("SQLiteStore.series, no downsampling (for scale)", "warm",
                     [1e3 * (time.perf_counter() - t0)], len(whole.steps),
                     f"{len(expected) - check(whole.steps, whole.values, expected)}/"
                     f"{len(expected)}", judged=False))
    return rows


def time_zoom(store: SQLiteStore, n: int, buckets: int, warm: int,
              expected: dict[int, float]) -> list[str]:
    """series_m4 of a zoomed range whose both ends cut a block (their points are read), warm.

    Its columns are not the full range's, so two spikes may share one: per column, the highest
    spike, the lowest dip and every non-finite value must come back.
    """
    start, end = n // 10 + 1, n - n // 10 - 1
    cols = columns(start, end, buckets)
    ends = [last for _, last in cols]
    inside = {s: v for s, v in expected.items() if start <= s <= end}
    want = {s: v for s, v in inside.items() if not math.isfinite(v)}
    best: dict[tuple[int, bool], tuple[int, float]] = {}  # (column, upward) -> step, value
    for step, value in inside.items():
        key = (bisect.bisect_left(ends, step), value > 0)
        if math.isfinite(value) and (key not in best or abs(value) > abs(best[key][1])):
            best[key] = (step, value)
    want.update(best.values())
    ms = []
    for _ in range(warm + 1):
        t0 = time.perf_counter()
        (answer,) = store.series_m4(1, SERIES, start=start, end=end, buckets=buckets)
        ms.append(1e3 * (time.perf_counter() - t0))
    kept = f"{len(want) - check(answer.steps, answer.values, want)}/{len(want)}"
    return _row(f"SQLiteStore.series_m4, steps {start:,}–{end:,} (zoomed)", "warm", ms[1:],
                len(answer.steps), kept)


def time_rest(db: Path, buckets: int, warm: int, expected: dict[int, float]) -> list[list[str]]:
    """The REST call against a server subprocess on the file's directory, from one keep-alive
    client (as a page makes it), the body parsed with ``json.loads``; plus a small answer for
    the cost of HTTP itself."""
    drop_cache(db)
    path, params = "/api/runs/1/series", {"name": SERIES, "buckets": str(buckets)}
    with ServerProcess(db.parent) as server, httpx.Client(base_url=server.http_url,
                                                          timeout=120) as client:
        times, small = [], []
        for _ in range(warm + 1):
            t0 = time.perf_counter()
            body = json.loads(client.get(path, params=params).raise_for_status().content)
            times.append(1e3 * (time.perf_counter() - t0))
        for _ in range(warm):
            t0 = time.perf_counter()
            json.loads(client.get("/api/runs/1").raise_for_status().content)
            small.append(1e3 * (time.perf_counter() - t0))
    (series,) = body["series"]
    values = [float(v) for v in series["values"]]
    missing = check(series["steps"], values, expected)
    kept = f"{len(expected) - missing}/{len(expected)}"
    name = f"GET {path}?name={SERIES}&buckets={buckets}"
    return [_row(name, "cold (first call)", times[:1], len(values), kept),
            _row(name, "warm", times[1:], len(values), kept),
            _row("GET /api/runs/1 (a small answer: the cost of HTTP, for scale)", "warm", small,
                 0, "—", judged=False)]


def _row(what: str, cache: str, ms: list[float], points: int, kept: str,
         judged: bool = True) -> list[str]:
    best = percentile(ms, 50)
    verdict = ("met" if best <= TARGET_MS else "MISSED") if judged else "—"
    return [what, cache, str(len(ms)), fmt(best, 1), fmt(max(ms), 1), f"{points:,}", kept,
            verdict]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", "--smoke", action="store_true")
    parser.add_argument("--points", type=int, default=10_000_000)
    parser.add_argument("--buckets", type=int, default=2000)
    parser.add_argument("--warm", type=int, default=10, help="warm repetitions")
    parser.add_argument("--cold", type=int, default=3, help="cold repetitions")
    args = parser.parse_args()
    tmp = None
    if args.quick:
        args.points, args.warm, args.cold = 200_000, 3, 1
        tmp = tempfile.TemporaryDirectory(prefix="bench-longrun-")
        db = Path(tmp.name) / "trainvitals.sqlite3"
    else:
        db = DATA_DIR / f"longrun-{args.points}" / "trainvitals.sqlite3"
    meter = LoadMeter()
    ensure(db, args.points, args.buckets)
    expected = {**spikes(args.points, args.buckets), **nonfinite(args.points)}
    rows = time_store(db, args.points, args.buckets, args.warm, args.cold, expected)
    rows += time_rest(db, args.buckets, args.warm, expected)
    print(header("Long runs: M4 downsampling of one long series (bench/longrun.py)", meter,
                 extra=[f"{args.points:,} points in one series → {args.buckets} buckets; "
                        f"{2 * SPIKES} spikes/dips (each alone in its column) and NaN, +Inf, "
                        f"-Inf must all come back; file {db} "
                        f"({db.stat().st_size / 2**20:,.0f} MiB)",
                        "cold = the file's pages dropped from the OS page cache "
                        "(posix_fadvise DONTNEED) and a fresh connection; target ≤ 50 ms"]))
    print(table(["query", "cache", "runs", "median ms", "max ms", "points returned",
                 "spikes and non-finite kept", "target ≤ 50 ms"], rows))
    print()
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
