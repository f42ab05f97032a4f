"""A bad batch: one sample with huge (finite) values at one step.

One decoder path of the data loader forgets to divide 8-bit images by 255. At one step a
sample decoded that way arrives: its pixels are 0–255 instead of 0–1, the network's depth
for it is hundreds of metres off and the step's loss jumps by orders of magnitude. The
gradient clip bounds the update; the next batches are normal again and the run recovers.
"""

from __future__ import annotations

import torch
from torch import nn

from tests.diagnosis.cases.probe import Probe, Truth
from tests.diagnosis.cases.scenes import Encoder, make_batch

STEPS, LR, BAD_STEP, JUMP = 45, 0.01, 32, 20.0


class DepthNet(nn.Module):
    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.encoder = Encoder(width)
        self.depth_head = nn.Conv2d(width, 1, 1)

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        raw = self.depth_head(self.encoder(image))
        return {"depth_raw": raw, "depth": nn.functional.softplus(raw) * 10}


class L1DepthLoss(nn.Module):
    def forward(self, out: dict[str, torch.Tensor], depth: torch.Tensor,
                mask: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        parts = {"depth_l1": ((out["depth"] - depth).abs() * mask).sum() / mask.sum()}
        return parts["depth_l1"], parts


def train(probe: Probe, truth: Truth) -> None:
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(6)
    model, criterion = DepthNet(), L1DepthLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    probe.start(model, optimizer, criterion)
    losses: list[float] = []
    for step in range(STEPS):
        batch = make_batch(gen)
        if step == BAD_STEP:
            batch.image[1] = batch.image[1] * 255.0  # decoded without the /255
        out = model(batch.image)
        valid = batch.mask.sum(dim=(1, 2, 3))  # the loss divides by it
        probe.denominator("valid_pixels", valid, valid_count=valid)
        probe.tensor("depth_raw", out["depth_raw"])
        probe.tensor("depth", out["depth"])
        loss, parts = criterion(out, batch.depth, batch.mask)
        losses.append(loss.item())
        baseline = sorted(losses[-11:-1])[len(losses[-11:-1]) // 2] if step >= 10 else None
        truth.first(step, baseline is not None and losses[-1] > JUMP * baseline,
                    f"the loss jumped more than ×{JUMP:g} over the median of the last 10 steps")
        optimizer.zero_grad()
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        probe.end_step(step, loss=loss, components=parts, grad_norm=norm, lr=LR)
        truth.steps = step + 1
    truth.facts["loss_after"] = losses[BAD_STEP + 5:]
