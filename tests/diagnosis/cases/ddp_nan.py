"""A NaN on one of two gloo ranks, spread to the other by DDP's all-reduce.

Two real ``torch.distributed`` processes (gloo) train one DDP model. At one step rank 1's
loader decodes a corrupt frame: one pixel of its image is NaN. Rank 1's forward and loss are
NaN; in backward DDP averages the gradients over the ranks, so rank 0's gradients are NaN in
the same step although its own forward was finite. The trainer does not check, and from the
next step both ranks' weights are NaN.

Run as ``python -m tests.diagnosis.cases.ddp_nan RANK PORT LEVEL RUN SERVER TOKEN OUT``: one
rank, which writes what it saw (its ``Truth``) to ``OUT`` as JSON.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from tests.diagnosis.cases.probe import Probe, Truth
from tests.diagnosis.cases.scenes import Encoder, make_batch

STEPS, LR, BAD_RANK, BAD_STEP = 24, 0.01, 1, 17


class DepthNet(nn.Module):
    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.encoder = Encoder(width)
        self.depth_head = nn.Conv2d(width, 1, 1)

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"depth": nn.functional.softplus(self.depth_head(self.encoder(image))) * 10}


class RelDepthLoss(nn.Module):
    def forward(self, out: dict[str, torch.Tensor], depth: torch.Tensor,
                mask: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        parts = {"depth": ((out["depth"] - depth).abs() / depth * mask).sum() / mask.sum()}
        return parts["depth"], parts


def train_rank(rank: int, port: int, probe: Probe, truth: Truth) -> None:
    """One rank's training (inside ``with probe``); the process group is its own."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=2)
    try:
        torch.manual_seed(0)
        model = DistributedDataParallel(DepthNet())
        criterion = RelDepthLoss()
        optimizer = torch.optim.Adam(model.parameters(), lr=LR)
        probe.start(model, optimizer, criterion)
        gen = torch.Generator().manual_seed(100 + rank)  # each rank its own shard
        for step in range(STEPS):
            batch = make_batch(gen)
            if rank == BAD_RANK and step == BAD_STEP:
                batch.image[0, 0, 3, 5] = float("nan")  # a corrupt frame
            out = model(batch.image)
            valid = batch.mask.sum(dim=(1, 2, 3))  # the loss divides by it
            probe.denominator("valid_pixels", valid, valid_count=valid)
            probe.tensor("depth", out["depth"])
            loss, parts = criterion(out, batch.depth, batch.mask)
            truth.first(step, ~torch.isfinite(loss), "this rank's loss is not finite")
            optimizer.zero_grad()
            loss.backward()
            grads_ok = all(bool(torch.isfinite(p.grad).all()) for p in model.parameters()
                           if p.grad is not None)
            if not grads_ok:
                truth.facts.setdefault("first_bad_grad", step)
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            probe.end_step(step, loss=loss, components=parts, grad_norm=norm, lr=LR)
            truth.steps = step + 1
    finally:
        dist.destroy_process_group()


def main(argv: list[str]) -> None:
    rank, port, level, run, server, token, out = argv
    torch.set_num_threads(1)
    truth = Truth()
    with Probe(level, run, server=server, token=token) as probe:
        train_rank(int(rank), int(port), probe, truth)
    Path(out).write_text(json.dumps(asdict(truth)))


if __name__ == "__main__":
    main(sys.argv[1:])
