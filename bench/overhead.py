"""Training overhead: the same CPU training step with no monitoring, trainvitals and its peers.

Every variant trains its own copy of the model (same seed). The variants are interleaved in
round-robin blocks — round r runs ``block`` steps of each variant, starting at a rotating
position — so drifting machine load hits them all alike. Reported per variant: median and p99
step time and the overhead against "none" as the median over rounds of the ratio of block
medians (paired, robust to a busy neighbour), with a bootstrap 95 % interval.

The statistics/transport split: "trainvitals, statistics only" is ``Monitor(server=None)``
(statistics and staging on the training thread, nothing encoded or sent); "trainvitals →
server" adds the sender thread (build, encode, websocket) and a real ``trainvitals serve``
subprocess on 127.0.0.1 (which shares this machine's cores: pessimistic).

    .venv/bin/python bench/overhead.py            # full run (~10 min on 2 cores)
    .venv/bin/python bench/overhead.py --quick    # a few steps: checks the script works
    .venv/bin/python bench/overhead.py --compile  # compiled vs compiled + trainvitals
    .venv/bin/python bench/overhead.py --pin      # trainer on core 0, server on the last
    .venv/bin/python bench/overhead.py --load     # while a busy loop takes one core
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import subprocess
import sys
import time
from collections.abc import Iterator

import psutil  # type: ignore[import-untyped, unused-ignore]
import torch
from common import LoadMeter, ServerProcess, fmt, header, note, percentile, table
from torch._dynamo.utils import counters
from workloads import (
    LOGGERS,
    Logger,
    describe,
    has_watch,
    make_logger,
    make_workload,
    peer_versions,
)

ROW_ORDER = LOGGERS
COMPILED_KINDS = ("none", "tv_stats", "tv_server", "tv_watch")


def main() -> int:
    args = _parse()
    torch.set_num_threads(args.threads)
    kinds = [k for k in ROW_ORDER if k != "tv_watch" or has_watch()]
    if args.compile:  # compiled vs compiled + trainvitals (the peers' cost is not the question)
        kinds = [k for k in kinds if k in COMPILED_KINDS]
    meter = LoadMeter()
    reports: list[tuple[str, list[list[str]]]] = []
    notes: list[str] = []
    with ServerProcess() as server, _placed(args, server) as placement:
        notes.append(placement)
        for name in args.workloads:
            rows, lines = run_workload(name, kinds, args, server)
            reports.append((name, rows))
            notes += [line for line in lines if line]
    print(header("Training overhead (bench/overhead.py)", meter, versions=peer_versions(),
                 extra=[f"torch threads: {args.threads}; {args.rounds} rounds × {args.block} "
                        f"steps per variant after {args.warmup} warm-up round(s)",
                        *(["every model runs under torch.compile (default settings, inductor); "
                           "graph breaks counted by Dynamo: "
                           f"{sum(counters['graph_break'].values())}"] if args.compile else []),
                        *describe(args.workloads),
                        *([] if has_watch() else ["Monitor.watch does not exist yet: no watch "
                                                  "row"]),
                        *notes]))
    for name, rows in reports:
        print(f"### {name}\n")
        print(table(["variant", "logs", "median ms/step", "p99 ms/step",
                     "overhead vs none (median)", "95% CI", "in logging calls µs/step"], rows))
        print()
    return 0


@contextlib.contextmanager
def _placed(args: argparse.Namespace, server: ServerProcess) -> Iterator[str]:
    """Where things run: ``--pin`` puts the trainer (this process) on the first core and the
    server on the last (``taskset``-style affinity); ``--load`` runs a process that keeps one
    core busy beside them (the last, when pinned)."""
    cores = sorted(os.sched_getaffinity(0))
    said = "placement: trainer and server on any core"
    if args.pin and len(cores) > 1:
        os.sched_setaffinity(0, {cores[0]})
        psutil.Process(server.pid).cpu_affinity([cores[-1]])
        said = f"placement: trainer pinned to core {cores[0]}, server to core {cores[-1]}"
    spinner = None
    if args.load:
        spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        if args.pin and len(cores) > 1:
            psutil.Process(spinner.pid).cpu_affinity([cores[-1]])
        said += "; another process keeps one core busy (a busy loop)"
    try:
        yield said
    finally:
        if spinner is not None:
            spinner.kill()
            spinner.wait()
        os.sched_setaffinity(0, set(cores))


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", "--smoke", action="store_true",
                        help="tiny run that only checks the script works")
    parser.add_argument("--workloads", nargs="+", default=["demo", "convnet"],
                        choices=["demo", "convnet"])
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--pin", action="store_true",
                        help="trainer on the first core, server on the last")
    parser.add_argument("--load", action="store_true",
                        help="a busy-loop process beside the run (on the server's core with --pin)")
    parser.add_argument("--block", type=int, default=10, help="steps per variant per round")
    parser.add_argument("--warmup", type=int, default=2, help="rounds not counted")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--compile", action="store_true",
                        help="run every variant's model under torch.compile: compiled vs "
                             "compiled + trainvitals")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.block, args.warmup = 2, 1, 0
    return args


def run_workload(name: str, kinds: list[str], args: argparse.Namespace,
                 server: ServerProcess) -> tuple[list[list[str]], list[str]]:
    """Interleave every variant on workload ``name``; the table rows and notes."""
    device = torch.device("cpu")
    stamp = time.strftime("%H%M%S")
    loggers: dict[str, Logger] = {}
    workloads = {}
    for kind in kinds:
        loggers[kind] = make_logger(kind, device, server.ws_url, server.token)
        workloads[kind] = make_workload(name, device, compiled=args.compile)
        loggers[kind].setup(workloads[kind].model, f"bench-{name}-{kind}-{stamp}")
    blocks: dict[str, list[list[float]]] = {k: [] for k in kinds}
    inside: dict[str, int] = {}
    steps = dict.fromkeys(kinds, 0)
    cpu_before = server.cpu_s()
    for r in range(args.warmup + args.rounds):
        if r == args.warmup:  # count time inside calls from here on
            inside = {k: loggers[k].inside_ns for k in kinds}
            cpu_before = server.cpu_s()
        note(f"{name}: round {r + 1}/{args.warmup + args.rounds}")
        shift = r % len(kinds)
        for kind in kinds[shift:] + kinds[:shift]:
            times = []
            for _ in range(args.block):
                t0 = time.perf_counter_ns()
                workloads[kind].step(steps[kind], loggers[kind])
                times.append((time.perf_counter_ns() - t0) / 1e6)
                steps[kind] += 1
            if r >= args.warmup:
                blocks[kind].append(times)
    server_cpu = server.cpu_s() - cpu_before
    counted = args.rounds * args.block
    notes = [loggers[k].close() for k in kinds]
    notes.append(f"{name}: the server subprocess used {server_cpu:.2f} CPU s over the counted "
                 f"steps ({1e3 * server_cpu / max(1, counted):.3f} ms per step of the "
                 "trainvitals variants together)")
    rows = []
    for kind in kinds:
        flat = [t for block in blocks[kind] for t in block]
        ratios = [percentile(b, 50) / percentile(base, 50)
                  for b, base in zip(blocks[kind], blocks["none"], strict=True)]
        lo, hi = bootstrap(ratios)
        per_step_us = (loggers[kind].inside_ns - inside[kind]) / counted / 1e3
        rows.append([loggers[kind].name, loggers[kind].logs, fmt(percentile(flat, 50)),
                     fmt(percentile(flat, 99)), pct(percentile(ratios, 50) - 1),
                     f"{pct(lo - 1)} … {pct(hi - 1)}", fmt(per_step_us, 0)])
    return rows, notes


def bootstrap(ratios: list[float], n: int = 2000) -> tuple[float, float]:
    """95 % interval of the median ratio, resampling rounds."""
    rng = random.Random(0)
    medians = sorted(percentile(rng.choices(ratios, k=len(ratios)), 50) for _ in range(n))
    return medians[int(0.025 * n)], medians[int(0.975 * n) - 1]


def pct(x: float) -> str:
    return f"{100 * x:+.1f} %"


if __name__ == "__main__":
    raise SystemExit(main())
