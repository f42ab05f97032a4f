"""Division by a count that can be 0: a per-sample mean over valid pixels.

The loss averages each sample's relative depth error over its valid pixels,
``(err * mask).sum() / mask.sum()``. At one step a frame arrives on which the depth sensor
returned nothing (its mask is all 0): its mean is 0/0 = NaN, the batch loss is NaN, every
gradient is NaN and, since this trainer does not check, the weights are NaN from then on.
"""

from __future__ import annotations

import torch
from torch import nn

from tests.diagnosis.cases.probe import Probe, Truth
from tests.diagnosis.cases.scenes import Encoder, make_batch

STEPS, LR, EMPTY_STEP = 36, 0.01, 27


class DepthNet(nn.Module):
    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.encoder = Encoder(width)
        self.depth_head = nn.Conv2d(width, 1, 1)

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"depth": nn.functional.softplus(self.depth_head(self.encoder(image))) * 10}


class MaskedDepthLoss(nn.Module):
    def forward(self, out: dict[str, torch.Tensor], depth: torch.Tensor,
                mask: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        err = (out["depth"] - depth).abs() / depth * mask
        per_sample = err.sum(dim=(1, 2, 3)) / mask.sum(dim=(1, 2, 3))
        parts = {"depth_l1": per_sample.mean()}
        return parts["depth_l1"], parts


def train(probe: Probe, truth: Truth) -> None:
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(5)
    model, criterion = DepthNet(), MaskedDepthLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    probe.start(model, optimizer, criterion)
    for step in range(STEPS):
        batch = make_batch(gen)
        if step == EMPTY_STEP:
            batch.mask[2] = 0.0  # the sensor returned nothing for this frame
        valid = batch.mask.sum(dim=(1, 2, 3))
        out = model(batch.image)
        probe.tensor("depth", out["depth"])
        probe.denominator("valid_pixels", valid, valid_count=valid)
        loss, parts = criterion(out, batch.depth, batch.mask)
        truth.steps = step + 1
        truth.first(step, ~torch.isfinite(loss), "the loss is not finite")
        optimizer.zero_grad()
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        probe.end_step(step, loss=loss, components=parts, grad_norm=norm, lr=LR)
