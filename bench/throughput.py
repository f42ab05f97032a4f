"""Throughput: does a process logging 100 values a step at 2,000 steps/s keep up, and drop nothing?

Each of ``--procs`` processes runs a ``Monitor`` against one real ``trainvitals serve`` and logs
``--values`` values a step — tensors of 64 elements (9 statistics each) plus scalars — paced at
``--rate`` steps/s (``0``: as fast as it can) for ``--seconds``; no model is trained, so the
loop is nothing but trainvitals' calls and what runs behind them. Reported per run: the rate
reached, the training thread's time inside our calls per step, records submitted, dropped
(a full queue or spool), acknowledged when the loop ended, how long ``close()`` took to
deliver the rest, and what the server stored (its runs list). ``--wire v1`` makes the plugin
believe the server reads only version 1 (as a server before version 2 says), for comparison.

    .venv/bin/python bench/throughput.py                       # 1 process, 2,000 steps/s, 10 s
    .venv/bin/python bench/throughput.py --procs 4 --rate 0    # four processes flat out
    .venv/bin/python bench/throughput.py --quick               # checks the script works
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import time
from typing import Any

import httpx
from common import LoadMeter, ServerProcess, fmt, header, note, table

TENSOR_ELEMENTS = 64


def main() -> int:
    args = _parse()
    meter = LoadMeter()
    rows = []
    with ServerProcess() as server:
        for wire in args.wire:
            note(f"{wire}: {args.procs} process(es) × {args.values} values at "
                 f"{args.rate or 'full'} steps/s for {args.seconds} s")
            ctx = mp.get_context("spawn")
            with ctx.Pool(args.procs) as pool:
                jobs = [(server.ws_url, server.token, f"tp-{wire}-{i}-{time.time_ns()}", args,
                         wire) for i in range(args.procs)]
                results = pool.starmap(run_one, jobs)
            stored = _stored(server, [r["run"] for r in results])
            for r in results:
                rows.append([wire, r["run"].split("-")[2], fmt(r["rate"], 0),
                             fmt(r["calls_us"], 1), str(r["submitted"]), str(r["dropped"]),
                             str(r["acked_at_end"]), fmt(r["close_s"], 2),
                             str(stored.get(r["run"], 0) - 1), str(r["steps"])])
    print(header("Throughput: logging flat out or paced (bench/throughput.py)", meter,
                 extra=[f"{args.procs} process(es), {args.values} values a step "
                        f"({_shape(args.values)}), target {args.rate or 'as fast as possible'}"
                        f" steps/s for {args.seconds} s each; the server beside them"]))
    print(table(["wire", "process", "steps/s reached", "µs in our calls / step", "submitted",
                 "dropped", "acknowledged at loop end", "close() s", "steps stored",
                 "steps logged"], rows))
    print()
    return 0


def _shape(values: int) -> str:
    tensors, scalars = divmod(max(values - 1, 0), 9)
    return f"loss, {tensors} tensors × 9 statistics, {scalars} scalars"


def run_one(url: str, token: str, run: str, args: argparse.Namespace, wire: str
            ) -> dict[str, Any]:
    """One training process: the paced loop, then close()."""
    import torch

    from trainvitals import Monitor
    from trainvitals.trainer_plugin.delivery import link

    torch.set_num_threads(1)
    if wire == "v1":  # as a server from before version 2 answers the handshake
        link.reads_versions = lambda header: {1}  # type: ignore[assignment]
    tensors, scalars = divmod(max(args.values - 1, 0), 9)
    data = [torch.randn(TENSOR_ELEMENTS) for _ in range(tensors)]
    names = [f"t{i}" for i in range(tensors)]
    values = {f"s{i}": 0.5 * i for i in range(scalars)}
    mon = Monitor(run, server=url, token=token, spool=None, close_timeout=120)
    for name, t in zip(names, data, strict=True):  # a first step, not counted: first calls
        mon.tensor(name, t)                         # set things up (imports, the connection)
    mon.log_step(-1, loss=0.25, scalars=values)
    mon.flush(30)
    end = time.perf_counter() + args.seconds
    period = 1.0 / args.rate if args.rate else 0.0
    due = time.perf_counter()
    step, inside = 0, 0.0  # steps logged in the paced loop (step -1 came before)
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        for name, t in zip(names, data, strict=True):
            mon.tensor(name, t)
        mon.log_step(step, loss=0.25, scalars=values)
        inside += time.perf_counter() - t0
        step += 1
        if period:
            due += period
            pause = due - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
    elapsed = args.seconds
    stats = mon.stats()
    t0 = time.perf_counter()
    final = mon.close()
    return {"run": run, "steps": step, "rate": step / elapsed, "calls_us": inside / step * 1e6,
            "submitted": final.submitted - 3,  # less the run start and end, and step -1
            "dropped": final.dropped,
            "acked_at_end": stats.acked.get((run, 0, mon.session), -1) - 1,  # less start, -1
            "close_s": time.perf_counter() - t0}


def _stored(server: ServerProcess, runs: list[str]) -> dict[str, int]:
    body = httpx.get(f"{server.http_url}/api/runs", timeout=30).json()
    return {r["name"]: r["steps"] for r in body["runs"] if r["name"] in runs}


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", "--smoke", action="store_true")
    parser.add_argument("--procs", type=int, default=1)
    parser.add_argument("--rate", type=float, default=2000.0, help="steps/s; 0: flat out")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--values", type=int, default=100)
    parser.add_argument("--wire", nargs="+", choices=["v2", "v1"], default=["v2"])
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.rate = 0.5, 200.0
    return args


if __name__ == "__main__":
    raise SystemExit(main())
