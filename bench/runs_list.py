"""The runs list: ``SQLiteStore.runs()`` and ``GET /api/runs`` on 100 runs × 1,000,000 steps.

The store file is built once per size, directly in the real schema (``SCHEMA`` from
``store.sqlite.schema``), and cached in ``bench/.data/runs-<R>x<N>/`` (gitignored): ``R`` runs
of ``N`` steps of rank 0 each (the ``steps`` table is what the list used to scan), one short
series per run, an open alert on every 5th run and two incidents (one resolved) on every 7th,
and the step counts (``run_steps``) counted from ``steps`` as the store keeps them. Timed, per
size:

* ``SQLiteStore.runs()`` in this process — cold (the file's pages dropped from the OS cache
  with ``posix_fadvise(DONTNEED)``, a new store and connection) and warm (repeated);
* ``GET /api/runs`` of a ``trainvitals serve`` subprocess on that data directory, first call
  after start-up on a dropped cache (cold) and repeated (warm), from one keep-alive client;
* for scale, what the list did per run before ``run_steps``: ``count(*), min(time),
  max(time)`` over the run's ``steps`` rows, warm, on a few runs (and times the run count).

Two sizes by default (10,000 and 1,000,000 steps per run): the list's time must not depend on
the steps a run holds. Every answer is checked: all runs, each with its step count and times.

    .venv/bin/python bench/runs_list.py            # first run builds the files (~1.5 min, 2 GiB)
    .venv/bin/python bench/runs_list.py --quick    # 10 runs × 1,000 / 5,000 steps in a temp dir
"""

from __future__ import annotations

import argparse
import json
import os
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
from trainvitals.server.store import RunRow
from trainvitals.server.store.sqlite import run_steps
from trainvitals.server.store.sqlite.blocks import rebuild
from trainvitals.server.store.sqlite.schema import SCHEMA, SCHEMA_VERSION

TARGET_MS = 100.0
T0 = 1_700_000_000.0  # the first run's first step time; steps are 10 ms apart
POINTS = 1_000  # of the one series per run (the list never reads points)


def first_time(run: int) -> float:
    return T0 + run * 86_400.0


def build(db: Path, runs: int, steps: int) -> None:
    """The store file: the real schema, ``runs`` runs × ``steps`` steps."""
    db.parent.mkdir(parents=True, exist_ok=True)
    tmp = db.with_suffix(".building")
    tmp.unlink(missing_ok=True)
    started = time.monotonic()
    with sqlite3.connect(tmp) as conn:
        conn.execute("PRAGMA journal_mode=OFF")
        conn.execute("PRAGMA synchronous=OFF")
        conn.executescript(SCHEMA)
        conn.execute("INSERT INTO meta VALUES ('schema_version', ?)", (SCHEMA_VERSION,))
        for r in range(1, runs + 1):
            t = first_time(r)
            last = t + (steps - 1) * 0.01
            conn.execute("INSERT INTO runs(id, name, created, updated, status, last_step) "
                         "VALUES (?, ?, ?, ?, ?, ?)",
                         (r, f"run-{r:03d}", t, last, "running" if r == runs else "finished",
                          steps - 1))
            conn.execute("INSERT INTO streams(run_id, rank, session, started) "
                         "VALUES (?, 0, 'bench', ?)", (r, t))
            conn.execute(
                "WITH RECURSIVE c(s) AS (SELECT 0 UNION ALL SELECT s + 1 FROM c WHERE s + 1 < :n) "
                "INSERT INTO steps SELECT :run, 0, s, :t + s * 0.01 FROM c",
                {"n": steps, "run": r, "t": t})
            run_steps.rebuild(conn, [r])  # the step counts the store keeps with steps
            conn.execute("INSERT INTO series(id, run_id, rank, name) VALUES (?, ?, 0, 'loss')",
                         (r, r))
            fill_points(conn, r, min(steps, POINTS))
            rebuild(conn, [r])  # the block summaries the store keeps with points
            if r % 5 == 0:
                conn.execute(
                    "INSERT INTO alerts(run_id, rank, rule, series, severity, state, first_step, "
                    "opened_step, last_step, count, message) "
                    "VALUES (?, 0, 'spike', 'loss', 'warning', 'open', 1, 1, 1, 1, 'a spike')",
                    (r,))
            if r % 7 == 0:
                conn.executemany(
                    "INSERT INTO incidents(run_id, number, kind, severity, state, onset_step, "
                    "rank, opened_step, last_step, headline, remedy) "
                    "VALUES (?, ?, 'nonfinite_loss', 'critical', ?, 1, 0, 1, 1, 'NaN', 'look')",
                    [(r, 1, "resolved"), (r, 2, "open")])
            conn.commit()
            if r % 10 == 0 or r == runs:
                note(f"{db.parent.name}: run {r}/{runs} written "
                     f"({time.monotonic() - started:.0f} s)")
    tmp.rename(db)
    note(f"built {db} ({runs} runs × {steps:,} steps) in {time.monotonic() - started:.0f} s")


def ensure(db: Path, runs: int, steps: int) -> None:
    """Build the file unless a complete one of this schema version is cached."""
    if db.exists():
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
            version = conn.execute("SELECT value FROM meta WHERE key='schema_version'"
                                   ).fetchone()
            shape = conn.execute("SELECT count(*), max(last_step) FROM runs").fetchone()
        if version and int(version[0]) == SCHEMA_VERSION and shape == (runs, steps - 1):
            return
        note(f"{db} is stale; rebuilding")
        db.unlink()
    build(db, runs, steps)


def drop_cache(db: Path) -> None:
    """Evict the file's pages from the OS page cache (clean pages; no root needed)."""
    for path in (db, db.with_name(db.name + "-wal")):
        if path.exists():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def right(listed: list[tuple[int, int, float | None, float | None]], runs: int,
          steps: int) -> str:
    """Whether every run came back with its step count and first/last time."""
    want = sorted((r, steps, first_time(r), first_time(r) + (steps - 1) * 0.01)
                  for r in range(1, runs + 1))
    return "yes" if sorted(listed) == want else "NO"


def _of(rows: list[RunRow]) -> list[tuple[int, int, float | None, float | None]]:
    return [(r.id, r.steps, r.first_time, r.last_time) for r in rows]


def time_store(db: Path, runs: int, steps: int, warm: int, cold: int) -> list[list[str]]:
    cold_ms, got = [], []
    for _ in range(cold):
        store = SQLiteStore(db)
        store.open()  # as the server does at start-up (its writer connection stays open)
        drop_cache(db)
        t0 = time.perf_counter()
        got = store.runs()
        cold_ms.append(1e3 * (time.perf_counter() - t0))
        store.close()
    ok = right(_of(got), runs, steps)
    store = SQLiteStore(db)
    store.open()
    store.runs()
    warm_ms = []
    for _ in range(warm):
        t0 = time.perf_counter()
        store.runs()
        warm_ms.append(1e3 * (time.perf_counter() - t0))
    store.close()
    return [_row(steps, "SQLiteStore.runs() (in process)", "cold", cold_ms, ok),
            _row(steps, "SQLiteStore.runs() (in process)", "warm", warm_ms, ok)]


def time_rest(db: Path, runs: int, steps: int, warm: int) -> list[list[str]]:
    drop_cache(db)
    with ServerProcess(db.parent) as server, httpx.Client(base_url=server.http_url,
                                                          timeout=600) as client:
        ms, body = [], {}
        for _ in range(warm + 1):
            t0 = time.perf_counter()
            body = json.loads(client.get("/api/runs").raise_for_status().content)
            ms.append(1e3 * (time.perf_counter() - t0))
    ok = right([(r["id"], r["steps"], r["first_time"], r["last_time"]) for r in body["runs"]],
               runs, steps)
    return [_row(steps, "GET /api/runs (trainvitals serve)", "cold (first call)", ms[:1], ok),
            _row(steps, "GET /api/runs (trainvitals serve)", "warm", ms[1:], ok)]


def time_before(db: Path, runs: int, steps: int, sample: int) -> list[list[str]]:
    """The scan the list ran per run before run_steps, warm, on ``sample`` runs."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    ms = []
    try:
        for r in range(1, sample + 2):  # the first one warms the pages up
            t0 = time.perf_counter()
            (n, _, _) = conn.execute("SELECT count(*), min(time), max(time) FROM steps "
                                     "WHERE run_id=?", (r,)).fetchone()
            ms.append(1e3 * (time.perf_counter() - t0))
            assert n == steps
    finally:
        conn.close()
    per_run = percentile(ms[1:], 50)
    total = per_run * runs
    shown = f"{fmt(total / 1e3, 1)} s" if total >= 1e3 else f"{fmt(total, 0)} ms"
    return [[f"{steps:,}", f"before: count(*), min/max(time) over one run's steps (× {runs} "
             f"runs ≈ {shown} per list)", "warm", str(len(ms) - 1),
             fmt(per_run, 1), fmt(max(ms[1:]), 1), "—", "—"]]


def _row(steps: int, what: str, cache: str, ms: list[float], ok: str) -> list[str]:
    median = percentile(ms, 50)
    return [f"{steps:,}", what, cache, str(len(ms)), fmt(median, 1), fmt(max(ms), 1), ok,
            "met" if median <= TARGET_MS else "MISSED"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", "--smoke", action="store_true")
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--steps", type=int, nargs="+", default=[10_000, 1_000_000],
                        help="steps per run, one store per value")
    parser.add_argument("--warm", type=int, default=20, help="warm repetitions")
    parser.add_argument("--cold", type=int, default=3, help="cold repetitions")
    parser.add_argument("--before", type=int, default=3,
                        help="runs to time the old per-run scan on")
    args = parser.parse_args()
    tmp = None
    if args.quick:
        args.runs, args.steps, args.warm, args.cold, args.before = 10, [1_000, 5_000], 3, 1, 2
        tmp = tempfile.TemporaryDirectory(prefix="bench-runs-list-")
        base = Path(tmp.name)
    else:
        base = DATA_DIR
    meter = LoadMeter()
    rows, files = [], []
    for steps in args.steps:
        db = base / f"runs-{args.runs}x{steps}" / "trainvitals.sqlite3"
        ensure(db, args.runs, steps)
        files.append(f"{db} ({db.stat().st_size / 2**20:,.0f} MiB)")
        rows += time_store(db, args.runs, steps, args.warm, args.cold)
        rows += time_rest(db, args.runs, steps, args.warm)
        rows += time_before(db, args.runs, steps, min(args.before, args.runs - 1))
    print(header("The runs list (bench/runs_list.py)", meter,
                 extra=[f"{args.runs} runs × " + " and ".join(f"{s:,}" for s in args.steps)
                        + " steps of one rank each; files " + ", ".join(files),
                        "cold = the file's pages dropped from the OS page cache "
                        "(posix_fadvise DONTNEED) and a fresh connection (for REST: a fresh "
                        "server, its first call); target ≤ 100 ms"]))
    print(table(["steps per run", "query", "cache", "runs", "median ms", "max ms",
                 "every run right", "target ≤ 100 ms"], rows))
    print()
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
