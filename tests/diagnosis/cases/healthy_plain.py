"""Healthy control, plain: a small depth network that trains as it should.

Nothing is planted. Adam at a constant learning rate, a relative depth loss over valid
pixels, ``clip_grad_norm_(…, 1.0)``; the loss falls and every value stays finite.
"""

from __future__ import annotations

import torch
from torch import nn

from tests.diagnosis.cases.probe import Probe, Truth
from tests.diagnosis.cases.scenes import Encoder, make_batch

STEPS, LR = 40, 0.01


class DepthNet(nn.Module):
    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.encoder = Encoder(width)
        self.depth_head = nn.Conv2d(width, 1, 1)

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        raw = self.depth_head(self.encoder(image))
        return {"depth_raw": raw, "depth": nn.functional.softplus(raw) * 10}


class RelDepthLoss(nn.Module):
    def forward(self, out: dict[str, torch.Tensor], depth: torch.Tensor,
                mask: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        parts = {"depth": ((out["depth"] - depth).abs() / depth * mask).sum() / mask.sum()}
        return parts["depth"], parts


def train(probe: Probe, truth: Truth) -> None:
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(13)
    model, criterion = DepthNet(), RelDepthLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    probe.start(model, optimizer, criterion)
    losses: list[float] = []
    for step in range(STEPS):
        batch = make_batch(gen)
        out = model(batch.image)
        valid = batch.mask.sum(dim=(1, 2, 3))  # the loss divides by it
        probe.denominator("valid_pixels", valid, valid_count=valid)
        probe.tensor("depth_raw", out["depth_raw"])
        probe.tensor("depth", out["depth"])
        loss, parts = criterion(out, batch.depth, batch.mask)
        optimizer.zero_grad()
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        truth.first(step, not (torch.isfinite(loss) and torch.isfinite(norm)),
                    "a loss or gradient norm is not finite")
        optimizer.step()
        probe.end_step(step, loss=loss, components=parts, grad_norm=norm, lr=LR)
        losses.append(loss.item())
        truth.steps = step + 1
    truth.facts["first_loss"], truth.facts["last_loss"] = losses[0], losses[-1]
