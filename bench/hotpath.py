"""Hot path: time spent inside the plugin's per-step calls, per call, median and p99.

Runs the demo's training step with a ``Monitor`` and times every ``tensor``, ``clip_guard`` and
``log_step`` call with ``perf_counter_ns``; cross-checks against ``Monitor.times``. For scale,
the same measurement for what a TensorBoard or wandb user puts on the training thread (18
values read with ``.item()`` and handed to ``add_scalar`` / ``wandb.log``).

    .venv/bin/python bench/hotpath.py            # 1000 steps per variant
    .venv/bin/python bench/hotpath.py --quick    # a few steps: checks the script works
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from collections.abc import Callable
from functools import partial
from typing import Any

import torch
from common import LoadMeter, ServerProcess, fmt, header, note, percentile, table
from workloads import Logger, TrainVitals, describe, make_logger, make_workload, peer_versions

VARIANTS = ("tv_stats", "tv_server", "tensorboard", "wandb")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", "--smoke", action="store_true")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--workload", default="demo", choices=["demo", "convnet"])
    parser.add_argument("--only", nargs="+", choices=[*VARIANTS, "tv_watch"],
                        default=list(VARIANTS),
                        help="variants to run (e.g. one, under a profiler)")
    args = parser.parse_args()
    steps = 20 if args.quick else args.steps
    torch.set_num_threads(args.threads)
    meter = LoadMeter()
    rows: list[list[str]] = []
    crosscheck = []
    with ServerProcess() as server:
        for kind in args.only:
            logger = make_logger(kind, torch.device("cpu"), server.ws_url, server.token)
            samples = measure(logger, steps, args.workload)
            rows += [[logger.name, call, str(len(v)), fmt(percentile(v, 50), 1),
                      fmt(percentile(v, 99), 1), fmt(max(v), 1)]
                     for call, v in samples.items()]
            if isinstance(logger, TrainVitals):
                crosscheck.append(_crosscheck(logger, samples))
            logger.close()
    print(header("Hot path: time inside the per-step calls (bench/hotpath.py)", meter,
                 versions=peer_versions(),
                 extra=[f"torch threads: {args.threads}; {steps} {args.workload} steps per "
                        "variant, the first 10 % not counted", *describe([args.workload]),
                        *crosscheck]))
    print(table(["variant", "call", "calls", "median µs", "p99 µs", "max µs"], rows))
    print()
    return 0


def measure(logger: Logger, steps: int, workload_name: str) -> dict[str, list[float]]:
    """Train ``steps`` steps; per-call durations (µs) of the logger's calls."""
    samples: dict[str, list[float]] = defaultdict(list)
    workload = make_workload(workload_name)
    logger.setup(workload.model, f"bench-hotpath-{type(logger).__name__}-{time.strftime('%H%M%S')}")
    warmup = max(2, steps // 10)
    timed = _Timed(logger, samples)
    for step in range(steps):
        timed.counting = step >= warmup
        if step == warmup and isinstance(logger, TrainVitals):
            logger.monitor.times.calls = 0
            logger.monitor.times.total_s = logger.monitor.times.max_s = 0.0
        timed.begin_step()
        workload.step(step, timed)  # type: ignore[arg-type]
        timed.end_step()
        if step % 200 == 0:
            note(f"{logger.name}: step {step}/{steps}")
    return dict(samples)


class _Timed:
    """Wraps a logger: each call is timed and filed under its name; 'per step' sums them."""

    def __init__(self, logger: Logger, samples: dict[str, list[float]]) -> None:
        self.logger, self.samples, self.counting = logger, samples, False
        self.inside_ns, self.steps, self._step_ns = 0, 0, 0

    def begin_step(self) -> None:
        self._step_ns = 0

    def end_step(self) -> None:
        if self.counting:
            self.samples["all calls of one step"].append(self._step_ns / 1e3)

    def _time(self, label: str, fn: Callable[[], Any]) -> Any:
        t0 = time.perf_counter_ns()
        out = fn()
        spent = time.perf_counter_ns() - t0
        self._step_ns += spent
        if self.counting:
            self.samples[label].append(spent / 1e3)
        return out

    def tensors(self, watched: Any) -> None:
        if isinstance(self.logger, TrainVitals):
            monitor = self.logger.monitor
            for name, (t, feeds_exp) in watched.items():
                self._time(f"tensor({name})", partial(monitor.tensor, name, t,
                                                      feeds_exp=feeds_exp))
        else:
            self.logger.tensors(watched)

    def guard(self, raw: torch.Tensor, threshold: float, components: Any) -> torch.Tensor:
        label = "clip_guard()" if isinstance(self.logger, TrainVitals) else "guard (if)"
        used: torch.Tensor = self._time(label, lambda: self.logger.guard(raw, threshold,
                                                                         components))
        return used

    def end(self, *args: Any) -> None:
        label = ("log_step()" if isinstance(self.logger, TrainVitals)
                 else "18 × .item() + log call")
        self._time(label, lambda: self.logger.end(*args))


def _crosscheck(logger: TrainVitals, samples: dict[str, list[float]]) -> str:
    times = logger.monitor.times
    ours = sum(sum(v) for k, v in samples.items() if k != "all calls of one step")
    n = sum(len(v) for k, v in samples.items() if k != "all calls of one step")
    return (f"{logger.name}: Monitor.times says {times.calls} calls, "
            f"{1e6 * times.total_s / max(1, times.calls):.1f} µs mean, max "
            f"{1e6 * times.max_s:.0f} µs; timed from outside: {n} calls, "
            f"{ours / max(1, n):.1f} µs mean")


if __name__ == "__main__":
    raise SystemExit(main())
