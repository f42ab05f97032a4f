"""sqrt at 0 in the loss: its gradient is infinite.

The point loss is the Euclidean distance between predicted and ground-truth 3D points,
written as ``sqrt(((pred - gt) ** 2).sum(1))`` on masked points (``pred * mask``, ``gt *
mask``). The first batches come from the synthetic set, dense depth everywhere. When the
loader moves on to the LiDAR set, whose frames have holes, the masked points are exactly 0 −
0: ``sqrt(0)`` is fine forward, but its derivative ``1 / (2·sqrt(0))`` is +Inf, ``Inf · 0``
is NaN, and every gradient of that step is NaN. The loss itself stays finite; the trainer
does not check gradients, so the weights are NaN from the next step on.
"""

from __future__ import annotations

import torch
from torch import nn

from tests.diagnosis.cases.probe import Probe, Truth
from tests.diagnosis.cases.scenes import SIZE, Encoder, make_batch

STEPS, LR, LIDAR_FROM = 30, 0.01, 21


class PointNet(nn.Module):
    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.encoder = Encoder(width)
        self.point_head = nn.Conv2d(width, 3, 1)

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        raw = self.point_head(self.encoder(image))
        z = nn.functional.softplus(raw[:, 2:]) * 10
        return {"points": torch.cat([raw[:, :2] * z, z], 1)}


class PointDistanceLoss(nn.Module):
    def forward(self, out: dict[str, torch.Tensor], depth: torch.Tensor,
                mask: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, SIZE), torch.linspace(-1, 1, SIZE),
                                indexing="ij")
        gt = torch.cat([xs.expand_as(depth) * depth, ys.expand_as(depth) * depth, depth], 1)
        dist = torch.sqrt((((out["points"] - gt) * mask) ** 2).sum(1))
        parts = {"points": dist.sum() / mask.sum()}
        return parts["points"], parts


def train(probe: Probe, truth: Truth) -> None:
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(12)
    model, criterion = PointNet(), PointDistanceLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    probe.start(model, optimizer, criterion)
    for step in range(STEPS):
        batch = make_batch(gen, holes=0.1 if step >= LIDAR_FROM else 0.0)
        out = model(batch.image)
        valid = batch.mask.sum(dim=(1, 2, 3))  # the loss divides by it
        probe.denominator("valid_pixels", valid, valid_count=valid)
        probe.tensor("points", out["points"])
        loss, parts = criterion(out, batch.depth, batch.mask)
        optimizer.zero_grad()
        loss.backward()
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        truth.first(step, not all(bool(torch.isfinite(g).all()) for g in grads),
                    "a gradient is not finite")
        truth.facts.setdefault("loss_finite", []).append(bool(torch.isfinite(loss)))
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        probe.end_step(step, loss=loss, components=parts, grad_norm=norm, lr=LR)
        truth.steps = step + 1
