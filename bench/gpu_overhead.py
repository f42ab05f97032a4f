"""GPU overhead: the overhead benchmark on a CUDA device, proving the plugin never syncs.

The same workloads and variants as ``bench/overhead.py``, on ``cuda``, interleaved in
round-robin blocks. A block is timed from one ``torch.cuda.synchronize()`` to the next, so a
step's time is the device's throughput, not the time to enqueue it. The trainvitals variants
run under ``torch.cuda.set_sync_debug_mode("error")``: any host-device synchronisation raises.
Where the workload's own step synchronises (the demo model copies its pixel grid from host
memory in every forward), the whole step cannot run in that mode; then only the plugin's
calls do, and the table says so. TensorBoard and wandb users read values with ``.item()``,
which synchronises by design: those variants run in normal mode.

    .venv/bin/python bench/gpu_overhead.py            # needs a CUDA device and a CUDA torch
    .venv/bin/python bench/gpu_overhead.py --quick
    .venv/bin/python bench/gpu_overhead.py --cpu-dry-run --quick   # exercise the code on a CPU

Without a CUDA device it exits with status 2 and says so (nothing is measured).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from common import LoadMeter, ServerProcess, fmt, header, note, percentile, table
from overhead import bootstrap, pct
from workloads import (
    Logger,
    TrainVitals,
    Workload,
    describe,
    has_watch,
    make_logger,
    make_workload,
    peer_versions,
)

NO_CUDA = 2  # exit status when there is no CUDA device
KINDS = ("none", "naive", "tensorboard", "wandb", "tv_server", "tv_watch")


@contextlib.contextmanager
def sync_mode(mode: str, enabled: bool) -> Iterator[None]:
    """``torch.cuda.set_sync_debug_mode(mode)`` for the block, then back to the previous one."""
    if not enabled:
        yield
        return
    before = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode(mode)
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(before)


class PluginCallsChecked(Logger):
    """Wraps a logger: only its calls run under sync debug mode "error" (the step syncs)."""

    def __init__(self, inner: Logger, enabled: bool) -> None:
        super().__init__(device=inner.device)
        self.inner, self.enabled = inner, enabled
        self.name, self.logs = inner.name, inner.logs

    def setup(self, model: torch.nn.Module, run: str) -> None:
        self.inner.setup(model, run)

    def tensors(self, watched: Any) -> None:
        with sync_mode("error", self.enabled):
            self.inner.tensors(watched)

    def guard(self, raw: torch.Tensor, threshold: float,
              components: Mapping[str, torch.Tensor]) -> torch.Tensor:
        with sync_mode("error", self.enabled):
            return self.inner.guard(raw, threshold, components)

    def end(self, *args: Any) -> None:
        with sync_mode("error", self.enabled):
            self.inner.end(*args)

    def close(self) -> str:
        return self.inner.close()


def step_is_sync_free(name: str, device: torch.device, cuda: bool) -> bool:
    """Whether the workload's plain step runs under sync debug mode "error"."""
    workload = make_workload(name, device)
    logger = Logger(device=device)
    workload.step(0, logger)  # the first step may allocate optimizer state; not judged
    try:
        with sync_mode("error", cuda):
            workload.step(1, logger)
    except RuntimeError as exc:
        note(f"{name}: the plain step synchronises ({str(exc).splitlines()[0]}); only the "
             "plugin's calls are checked")
        return False
    return True


def run_workload(name: str, kinds: list[str], args: argparse.Namespace,
                 server: ServerProcess, device: torch.device, cuda: bool) -> dict[str, Any]:
    whole_step = step_is_sync_free(name, device, cuda)
    stamp = time.strftime("%H%M%S")
    loggers: dict[str, Logger] = {}
    workloads: dict[str, Workload] = {}
    checked: dict[str, str] = {}
    for kind in kinds:
        logger = make_logger(kind, device, server.ws_url, server.token)
        if isinstance(logger, TrainVitals):
            checked[kind] = ("whole step under \"error\": no sync" if whole_step else
                             "plugin calls under \"error\": no sync (the step itself syncs)")
            if not whole_step:
                logger = PluginCallsChecked(logger, cuda)
        else:
            checked[kind] = "not checked (the variant syncs by design)" if kind != "none" else (
                "whole step under \"error\": no sync" if whole_step else "step syncs")
        loggers[kind] = logger
        workloads[kind] = make_workload(name, device)
        logger.setup(workloads[kind].model, f"bench-gpu-{name}-{kind}-{stamp}")
    blocks: dict[str, list[float]] = {k: [] for k in kinds}
    steps = dict.fromkeys(kinds, 0)
    sync: Callable[[], None] = torch.cuda.synchronize if cuda else (lambda: None)
    for r in range(args.warmup + args.rounds):
        note(f"{name}: round {r + 1}/{args.warmup + args.rounds}")
        shift = r % len(kinds)
        for kind in kinds[shift:] + kinds[:shift]:
            strict = whole_step and (kind == "none" or isinstance(loggers[kind], TrainVitals))
            sync()
            t0 = time.perf_counter()
            with sync_mode("error", cuda and strict):
                for _ in range(args.block):
                    workloads[kind].step(steps[kind], loggers[kind])
                    steps[kind] += 1
            sync()
            if r >= args.warmup:
                blocks[kind].append(1e3 * (time.perf_counter() - t0) / args.block)
    notes = [loggers[k].close() for k in kinds]
    if not cuda:
        checked = dict.fromkeys(kinds, "not checked (CPU dry run)")
    rows = []
    for kind in kinds:
        ratios = [b / base for b, base in zip(blocks[kind], blocks["none"], strict=True)]
        lo, hi = bootstrap(ratios)
        rows.append([loggers[kind].name, fmt(percentile(blocks[kind], 50), 3),
                     fmt(percentile(blocks[kind], 99), 3), pct(percentile(ratios, 50) - 1),
                     f"{pct(lo - 1)} … {pct(hi - 1)}", checked[kind]])
    return {"rows": rows, "notes": [n for n in notes if n]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", "--smoke", action="store_true")
    parser.add_argument("--workloads", nargs="+", default=["demo", "convnet"],
                        choices=["demo", "convnet"])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--block", type=int, default=20, help="steps per variant per round")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--cpu-dry-run", action="store_true",
                        help="run on the CPU without the sync check (tests the script only)")
    args = parser.parse_args()
    cuda = torch.cuda.is_available()
    if not cuda and not args.cpu_dry_run:
        print(f"bench/gpu_overhead.py: no CUDA device (torch {torch.__version__}, "
              "torch.cuda.is_available() is False): nothing measured. Run it on a machine with "
              "an NVIDIA GPU and a CUDA build of torch: .venv/bin/python bench/gpu_overhead.py",
              file=sys.stderr)
        return NO_CUDA
    if args.quick:
        args.rounds, args.block, args.warmup = 2, 2, 1
    device = torch.device("cuda" if cuda else "cpu")
    if not cuda:
        torch.set_num_threads(1)
    kinds = [k for k in KINDS if k != "tv_watch" or has_watch()]
    meter = LoadMeter()
    reports, notes = [], []
    with ServerProcess() as server:
        for name in args.workloads:
            result = run_workload(name, kinds, args, server, device, cuda)
            reports.append((name, result["rows"]))
            notes += result["notes"]
    gpu = torch.cuda.get_device_name() if cuda else "none: CPU DRY RUN, figures meaningless"
    print(header("GPU overhead (bench/gpu_overhead.py)", meter, versions=peer_versions(),
                 extra=[f"device: {gpu}", f"{args.rounds} rounds × {args.block} steps per "
                        f"variant after {args.warmup} warm-up round(s); block time from "
                        "synchronize to synchronize", *describe(args.workloads), *notes]))
    for name, rows in reports:
        print(f"### {name}\n")
        print(table(["variant", "median ms/step", "p99 ms/step", "overhead vs none (median)",
                     "95% CI", "sync check"], rows))
        print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
