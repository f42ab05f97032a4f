"""FSDP2 (``torch.distributed.fsdp.fully_shard``) on two gloo CPU ranks, as real processes.

Each rank watches its model after sharding (``fully_shard`` replaces the parameters) and logs a
DTensor gradient norm; a NaN on rank 1
reaches rank 0 through the gradient reduce-scatter. The server must store both ranks' steps
and open one incident that names rank 1. NCCL on GPUs is the same code path above the process
group, unproven here (no GPU).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.ports import free_port
from trainvitals.server import ServerThread

from .conftest import TOKEN, Told
from .fsdp_rank import BAD_RANK, BAD_STEP, STEPS

pytestmark = pytest.mark.slow  # two processes import torch and form a process group

ROOT = Path(__file__).resolve().parents[2]


def test_fully_shard_on_two_ranks_reports_both_and_names_the_bad_rank(
        server: ServerThread, told: Callable[..., Told], tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    ranks = [subprocess.Popen(
        [sys.executable, "-m", "tests.compat.fsdp_rank", str(rank), str(port), server.ws_url,
         TOKEN, "fsdp", str(tmp_path / f"spool{rank}")],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for rank in (0, 1)]
    outputs = [p.communicate(timeout=300)[0] for p in ranks]
    assert [p.returncode for p in ranks] == [0, 0], outputs
    for rank in (0, 1):
        seen = told("fsdp", "loss", "grad_norm", rank=rank)
        assert seen.steps("loss") == list(range(STEPS)) == seen.steps("grad_norm"), rank
    incidents = told("fsdp").incidents
    assert len(incidents) == 1, [i["headline"] for i in incidents]
    (incident,) = incidents
    assert incident["rank"] == BAD_RANK and incident["onset_step"] == BAD_STEP
    assert incident["headline"].startswith(f"Rank {BAD_RANK}: "), incident["headline"]
