"""Memory: the server's RSS as data accumulates, and the plugin's RSS cost in a training process.

Server, two ways (10 runs × 1,000,000 steps through the real ingest path would take hours here):

A. **Ingested for real**: 10 runs × ``--steps`` demo-shaped step records (32 values each) sent
   over the ingest websocket to a ``trainvitals serve`` subprocess, one run after another; RSS
   after start-up, after each run, and after reading every run back over REST.
B. **Bulk-built store**: 10 runs × ``--bulk-steps`` steps (default 1,000,000) with 4 series each
   (``loss``, ``loss_used``, ``grad_norm``, ``lr``) plus the ``steps`` table, written straight
   into the real schema and cached in ``bench/.data/``; a server is started on it and RSS taken
   after start-up and after each kind of read (runs list, run pages, downsampled loss charts),
   with the time each read took.

Plugin: the demo's training step in a fresh subprocess per variant (no monitor; trainvitals to
a server; trainvitals with ``watch(model)``), RSS after set-up and after ``--train-steps``
steps, and the peak (``ru_maxrss``).

    .venv/bin/python bench/memory.py            # full (first run builds a ~1 GiB store file)
    .venv/bin/python bench/memory.py --quick    # small counts: checks the script works
"""

from __future__ import annotations

import argparse
import collections
import json
import resource
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psutil  # type: ignore[import-untyped, unused-ignore]
from common import DATA_DIR, LoadMeter, ServerProcess, fill_points, fmt, header, note, table
from ingest import VALUES_PER_RECORD, FrameMaker, _expect_ack
from websockets.sync.client import connect

from trainvitals.protocol import Ack, decode
from trainvitals.server.store.sqlite import run_steps
from trainvitals.server.store.sqlite.blocks import rebuild
from trainvitals.server.store.sqlite.schema import SCHEMA, SCHEMA_VERSION

BULK_SERIES = ("loss", "loss_used", "grad_norm", "lr")


# ----------------------------------------------------------------------------- A: real ingest


def ingest_run(server: ServerProcess, run: str, steps: int, batch: int = 256,
               window: int = 4) -> None:
    """Send ``steps`` records of one run and wait for every ack."""
    maker = FrameMaker(run, uuid.uuid4().hex[:16], 0)
    with connect(f"{server.ws_url}/ws/ingest", proxy=None, max_size=None,
                 additional_headers={"Authorization": f"Bearer {server.token}"}) as ws:
        ws.send(maker.start)
        _expect_ack(ws, 0)
        sent = acked = 0
        outstanding: collections.deque[int] = collections.deque()
        while acked < steps:
            while len(outstanding) < window and sent < steps:
                count = min(batch, steps - sent)
                ws.send(maker.frame(sent + 1, count))
                sent += count
                outstanding.append(sent)
            reply = decode(ws.recv(timeout=120))
            if not isinstance(reply, Ack):
                raise RuntimeError(f"unexpected reply {reply!r}")
            while outstanding and outstanding[0] <= reply.seq:
                acked = outstanding.popleft()


def server_ingested(runs: int, steps: int) -> list[list[str]]:
    rows = []
    with ServerProcess() as server:
        rows.append(["A: ingested", "after start-up", "—", fmt(server.rss_mib(), 0), "—"])
        for i in range(runs):
            t0 = time.perf_counter()
            ingest_run(server, f"memory-{i}", steps)
            took = time.perf_counter() - t0
            note(f"run {i + 1}/{runs}: {steps:,} steps in {took:.1f} s")
            if i in (0, runs // 2 - 1, runs - 1):
                rows.append(["A: ingested", f"after {i + 1} run(s) × {steps:,} steps",
                             f"{(i + 1) * steps * VALUES_PER_RECORD:,}",
                             fmt(server.rss_mib(), 0),
                             f"{steps * VALUES_PER_RECORD / took:,.0f} values/s"])
        rows += _reads(server, "A: ingested", "loss", runs * steps * VALUES_PER_RECORD)
    return rows


def _reads(server: ServerProcess, label: str, series: str, points: int) -> list[list[str]]:
    """Read everything a dashboard user would, noting RSS and the time each kind took."""
    rows = []
    t0 = time.perf_counter()
    listed = server.get("/api/runs")["runs"]
    took = time.perf_counter() - t0
    rows.append([label, "after GET /api/runs", f"{points:,}", fmt(server.rss_mib(), 0),
                 f"{1e3 * took:,.0f} ms"])
    t0 = time.perf_counter()
    for run in listed:
        server.get(f"/api/runs/{run['id']}")
    took = time.perf_counter() - t0
    rows.append([label, f"after GET /api/runs/{{id}} × {len(listed)}", f"{points:,}",
                 fmt(server.rss_mib(), 0), f"{1e3 * took / len(listed):,.0f} ms each"])
    t0 = time.perf_counter()
    for run in listed:
        server.get(f"/api/runs/{run['id']}/series", name=series, buckets=2000)
    took = time.perf_counter() - t0
    rows.append([label, f"after GET …/series?name={series}&buckets=2000 × {len(listed)}",
                 f"{points:,}", fmt(server.rss_mib(), 0),
                 f"{1e3 * took / len(listed):,.0f} ms each"])
    return rows


# ----------------------------------------------------------------------------- B: bulk store


def build_bulk(db: Path, runs: int, steps: int) -> None:
    """``runs`` runs × ``steps`` steps × 4 series, straight into the real schema."""
    db.parent.mkdir(parents=True, exist_ok=True)
    tmp = db.with_suffix(".building")
    tmp.unlink(missing_ok=True)
    started = time.monotonic()
    with sqlite3.connect(tmp) as conn:
        conn.execute("PRAGMA journal_mode=OFF")
        conn.execute("PRAGMA synchronous=OFF")
        conn.executescript(SCHEMA)
        conn.execute("INSERT INTO meta VALUES ('schema_version', ?)", (SCHEMA_VERSION,))
        now = time.time()
        series_id = 0
        for r in range(1, runs + 1):
            conn.execute("INSERT INTO runs(id, name, created, updated, status, last_step) "
                         "VALUES (?, ?, ?, ?, 'finished', ?)",
                         (r, f"bulk-{r}", now, now + steps, steps - 1))
            conn.execute("INSERT INTO streams(run_id, rank, session) VALUES (?, 0, 'bench')",
                         (r,))
            conn.execute(
                "WITH RECURSIVE c(s) AS (SELECT 0 UNION ALL SELECT s + 1 FROM c WHERE s + 1 < :n) "
                "INSERT INTO steps SELECT :run, 0, s, :t + s * 0.01 FROM c",
                {"n": steps, "run": r, "t": now})
            run_steps.rebuild(conn, [r])  # the step counts the store keeps with steps
            for name in BULK_SERIES:
                series_id += 1
                conn.execute("INSERT INTO series(id, run_id, rank, name) VALUES (?,?,0,?)",
                             (series_id, r, name))
                fill_points(conn, series_id, steps)
                rebuild(conn, [series_id])  # the block summaries the store keeps with points
            conn.commit()
            note(f"bulk store: run {r}/{runs} written ({time.monotonic() - started:.0f} s)")
    tmp.rename(db)


def server_bulk(runs: int, steps: int, quick: bool) -> list[list[str]]:
    if quick:
        tmp = tempfile.TemporaryDirectory(prefix="bench-memory-")
        db = Path(tmp.name) / "trainvitals.sqlite3"
    else:
        db = DATA_DIR / f"memory-{runs}x{steps}" / "trainvitals.sqlite3"
    if not _bulk_ok(db, runs, steps):
        build_bulk(db, runs, steps)
    points = runs * steps * len(BULK_SERIES)
    label = "B: bulk-built"
    with ServerProcess(db.parent) as server:
        rows = [[label, f"after start-up on {runs} runs × {steps:,} steps", f"{points:,}",
                 fmt(server.rss_mib(), 0), f"file {db.stat().st_size / 2**20:,.0f} MiB"]]
        rows += _reads(server, label, "loss", points)
    return rows


def _bulk_ok(db: Path, runs: int, steps: int) -> bool:
    if not db.exists():
        return False
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        version = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        last = conn.execute("SELECT max(step) FROM points WHERE series_id=?",
                            (runs * len(BULK_SERIES),)).fetchone()
    if version and int(version[0]) == SCHEMA_VERSION and last[0] == steps - 1:
        return True
    db.unlink()
    return False


# ----------------------------------------------------------------------------- plugin


def child(variant: str, steps: int, server: str, token: str) -> None:
    """Runs in a fresh process: train, print RSS figures as JSON."""
    import torch
    from workloads import Logger, TrainVitals, make_workload

    torch.set_num_threads(1)
    proc = psutil.Process()
    workload = make_workload("demo")
    logger: Logger
    if variant == "none":
        logger = Logger(device=torch.device("cpu"))
    else:
        logger = TrainVitals(device=torch.device("cpu"), server=server, token=token,
                             watch=variant == "watch")
    logger.setup(workload.model, f"memory-{variant}-{uuid.uuid4().hex[:6]}")
    for step in range(10):
        workload.step(step, logger)
    after_setup = proc.memory_info().rss
    for step in range(10, 10 + steps):
        workload.step(step, logger)
    after_steps = proc.memory_info().rss
    logger.close()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"setup": after_setup, "steps": after_steps, "peak": peak}))


def plugin(steps: int) -> list[list[str]]:
    rows, base = [], None
    with ServerProcess() as server:
        for variant in ("none", "trainvitals", "watch"):
            out = subprocess.run([sys.executable, __file__, "--child", variant, "--train-steps",
                                  str(steps), "--server", server.ws_url, "--token",
                                  server.token], capture_output=True, text=True, check=True)
            got = json.loads(out.stdout.strip().splitlines()[-1])
            mib = {k: v / 2**20 for k, v in got.items()}
            base = base or mib
            label = {"none": "no monitoring", "trainvitals": "trainvitals → server",
                     "watch": "trainvitals + watch(model) → server"}[variant]
            rows.append([label, fmt(mib["setup"], 0), fmt(mib["steps"], 0),
                         fmt(mib["steps"] - mib["setup"], 1), fmt(mib["peak"], 0),
                         fmt(mib["steps"] - base["steps"], 1)])
            note(f"plugin {variant}: {mib}")
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", "--smoke", action="store_true")
    parser.add_argument("--steps", type=int, default=20_000, help="steps per run ingested (A)")
    parser.add_argument("--bulk-steps", type=int, default=1_000_000, help="steps per run (B)")
    parser.add_argument("--train-steps", type=int, default=1000, help="training steps (plugin)")
    parser.add_argument("--runs", type=int, default=10, help="runs in the store (A and B)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--server", help=argparse.SUPPRESS)
    parser.add_argument("--token", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.train_steps, args.server, args.token)
        return 0
    if args.quick:
        args.steps, args.bulk_steps, args.train_steps, args.runs = 100, 2000, 3, 2
    meter = LoadMeter()
    server_rows = (server_ingested(args.runs, args.steps)
                   + server_bulk(args.runs, args.bulk_steps, args.quick))
    plugin_rows = plugin(args.train_steps)
    print(header("Memory (bench/memory.py)", meter,
                 extra=[f"A: {args.runs} runs × {args.steps:,} steps × {VALUES_PER_RECORD} values "
                        "ingested over the websocket (256 records per frame)",
                        f"B: {args.runs} runs × {args.bulk_steps:,} steps × "
                        f"{len(BULK_SERIES)} series written straight into the schema, then served",
                        f"plugin: the demo step, {args.train_steps:,} steps after 10 warm-up "
                        "steps, each variant in a fresh process (torch threads 1)"]))
    print("### Server RSS\n")
    print(table(["store", "when", "values stored", "server RSS MiB", "note"], server_rows))
    print("\n### Plugin RSS in the training process\n")
    print(table(["variant", "RSS after set-up MiB", f"RSS after {args.train_steps:,} steps MiB",
                 "growth MiB", "peak RSS MiB", "Δ vs no monitoring MiB"], plugin_rows))
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
