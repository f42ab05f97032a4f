"""Planted failures: small seeded CPU training runs that die the way real ones do.

Each module is one researcher's training script with one bug (or none, for the controls),
written as its author would have written it, with ``Probe`` calls where a trainvitals user
puts a line. ``CASES`` lists them with the onset each declares; ``run_case`` trains one at
one wiring level against a server and returns what the case saw with plain torch (its
``Truth``), so a test can check that the failure really began where declared.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import torch

from tests.diagnosis.cases import (
    bad_batch,
    clip_hides,
    conf_exp,
    ddp_nan,
    detached_head,
    fp16_head,
    guard_stall,
    healthy_noisy,
    healthy_plain,
    lr_spike,
    masked_mean,
    norm_sqrt,
    optimizer_omits,
    point_sqrt,
)
from tests.diagnosis.cases.probe import LEVELS, Probe, TrainingAborted, Truth

__all__ = ["CASES", "LEVELS", "Case", "Truth", "run_case", "source_line"]

REPO = Path(__file__).resolve().parents[3]


@dataclass(frozen=True)
class Case:
    """One planted failure: its script, what it is, and where it begins (``None``: healthy)."""

    name: str
    module: ModuleType
    bug: str
    onset: int | None
    causes: int = 1
    rank: int = 0  # the rank where it starts
    world_size: int = 1

    @property
    def healthy(self) -> bool:
        return self.onset is None

    @property
    def file(self) -> str:
        """The case script's file name (what an op-level trace names as the source)."""
        return Path(str(self.module.__file__)).name


CASES: tuple[Case, ...] = (
    Case("conf_exp", conf_exp, "confidence head 1 + exp(raw), log-confidence regulariser "
         "not masked: raw climbs on the sky until exp overflows float32", onset=21),
    Case("norm_sqrt", norm_sqrt, "hand-written instance norm, one-pass variance E[x²]−E[x]² "
         "goes negative on overexposed frames: sqrt returns NaN", onset=30),
    Case("point_sqrt", point_sqrt, "loss sqrt(Σ(Δ·mask)²) is sqrt(0) on masked pixels once "
         "LiDAR frames with holes arrive: infinite derivative, NaN gradients", onset=21),
    Case("masked_mean", masked_mean, "per-sample mean over valid pixels divides by a count "
         "that is 0 for a frame without depth: 0/0", onset=27),
    Case("fp16_head", fp16_head, "depth head under float16 autocast, depth in mm: exp of a "
         "float16 raw above 11.09 overflows", onset=19),
    Case("bad_batch", bad_batch, "one sample decoded without /255 (pixels 0–255) at one "
         "step: the loss jumps ×40, the clip bounds the update", onset=32),
    Case("lr_spike", lr_spike, "per-sample scheduler reads the dataset length before it is "
         "set at the epoch boundary: lr ×300 for one step (SGD)", onset=30),
    Case("guard_stall", guard_stall, "curriculum moves to outdoor scenes, raw loss ~30 > "
         "clip_loss 10: the ×0 guard zeroes every step, gradients exactly 0", onset=25),
    Case("clip_hides", clip_hides, "smoothness weight typed 1e3 for 1e-3, switched on after "
         "warm-up: pre-clip gradient norm ×10⁴, clip_grad_norm_(…, 1.0) hides it", onset=30),
    Case("detached_head", detached_head, "z = out['depth'].detach() left in the loss path: "
         "the depth head gets no gradient from step 0", onset=0),
    Case("optimizer_omits", optimizer_omits, "optimizer built from encoder + depth_head "
         "only: normal_head gets gradients but never moves", onset=0),
    Case("ddp_nan", ddp_nan, "two gloo ranks, DDP: a NaN pixel in rank 1's frame; the "
         "all-reduce carries NaN gradients to rank 0", onset=17, rank=1, world_size=2),
    Case("healthy_plain", healthy_plain, "nothing planted: Adam, constant lr", onset=None,
         causes=0),
    Case("healthy_noisy", healthy_noisy, "nothing planted: noisy labels, dropout, batches of "
         "2, a log-variance into exp, warm-up from lr 0", onset=None, causes=0),
)


def source_line(case: Case, needle: str) -> int:
    """The line of ``case``'s script that holds ``needle`` (where its faulty op is)."""
    lines = Path(str(case.module.__file__)).read_text().splitlines()
    found = [n for n, line in enumerate(lines, start=1) if needle in line]
    if len(found) != 1:
        raise LookupError(f"{needle!r} is on lines {found} of {case.file}, expected one")
    return found[0]


def run_case(case: Case, level: str, run: str, *, server: str | None, token: str | None,
             scratch: Path) -> list[Truth]:
    """Train ``case`` at ``level`` as run ``run``; one ``Truth`` per rank (rank order)."""
    if case.world_size > 1:
        return _run_ranks(case, level, run, server=server, token=token, scratch=scratch)
    train: Callable[[Probe, Truth], None] = case.module.train
    truth = Truth()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with Probe(level, run, server=server, token=token) as probe:
            train(probe, truth)
    except TrainingAborted:
        truth.status = "crashed"
    finally:
        torch.set_num_threads(threads)
    return [truth]


def _run_ranks(case: Case, level: str, run: str, *, server: str | None, token: str | None,
               scratch: Path) -> list[Truth]:
    from tests.support.ports import free_port

    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    outs = [scratch / f"{run}-rank{r}.json" for r in range(case.world_size)]
    logs = [scratch / f"{run}-rank{r}.log" for r in range(case.world_size)]
    procs = [subprocess.Popen(
        [sys.executable, "-m", case.module.__name__, str(rank), str(port), level, run,
         server or "", token or "", str(out)],
        stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env, cwd=REPO)
        for rank, (out, log) in enumerate(zip(outs, logs, strict=True))]
    codes = [p.wait(timeout=300) for p in procs]
    if codes != [0] * case.world_size:
        raise RuntimeError(f"{case.name} ranks exited with {codes}:\n"
                           + "\n".join(log.read_text() for log in logs))
    return [Truth(**json.loads(out.read_text())) for out in outs]
