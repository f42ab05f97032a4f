"""A dead module: a ``.detach()`` cuts the depth head off the graph.

The network predicts depth and surface normals; the loss compares 3D points built from the
predicted depth, ``cat([xy * z, z])``, and the normals. While adding a visualisation the
author wrote ``z = out["depth"].detach()`` and left it in the loss path: no gradient reaches
the depth head from the first step on. The normal head and the shared encoder still learn, so
the total loss goes down and the run looks healthy; the depth head never moves.
"""

from __future__ import annotations

import torch
from torch import nn

from tests.diagnosis.cases.probe import Probe, Truth
from tests.diagnosis.cases.scenes import SIZE, Encoder, make_batch

STEPS, LR = 30, 0.01


class DepthNormalNet(nn.Module):
    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.encoder = Encoder(width)
        self.depth_head = nn.Conv2d(width, 1, 1)
        self.normal_head = nn.Conv2d(width, 3, 1)

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        feat = self.encoder(image)
        normals = nn.functional.normalize(self.normal_head(feat), dim=1)
        return {"depth": nn.functional.softplus(self.depth_head(feat)) * 10, "normals": normals}


class PointNormalLoss(nn.Module):
    def forward(self, out: dict[str, torch.Tensor], depth: torch.Tensor,
                mask: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, SIZE), torch.linspace(-1, 1, SIZE),
                                indexing="ij")
        xy = torch.stack([xs, ys]).expand(depth.shape[0], 2, SIZE, SIZE)
        z = out["depth"].detach()  # for the point-cloud preview — and, by mistake, the loss
        points, gt_points = torch.cat([xy * z, z], 1), torch.cat([xy * depth, depth], 1)
        gt_normals = torch.zeros_like(out["normals"])
        gt_normals[:, 2] = 1.0  # fronto-parallel planes, roughly
        parts = {"points": ((points - gt_points).abs() * mask).sum() / mask.sum() / 3,
                 "normal": (1 - (out["normals"] * gt_normals).sum(1)).mean()}
        return parts["points"] + parts["normal"], parts


def train(probe: Probe, truth: Truth) -> None:
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(10)
    model, criterion = DepthNormalNet(), PointNormalLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    probe.start(model, optimizer, criterion)
    start = [p.detach().clone() for p in model.depth_head.parameters()]
    for step in range(STEPS):
        batch = make_batch(gen)
        out = model(batch.image)
        valid = batch.mask.sum(dim=(1, 2, 3))  # the loss divides by it
        probe.denominator("valid_pixels", valid, valid_count=valid)
        probe.tensor("depth", out["depth"])
        probe.tensor("normals", out["normals"])
        loss, parts = criterion(out, batch.depth, batch.mask)
        optimizer.zero_grad()
        loss.backward()
        dead = all(p.grad is None for p in model.depth_head.parameters())
        truth.first(step, dead, "no gradient reaches model.depth_head")
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        probe.end_step(step, loss=loss, components=parts, grad_norm=norm, lr=LR)
        truth.steps = step + 1
    moved = [not torch.equal(a, b) for a, b in zip(start, model.depth_head.parameters(),
                                                   strict=True)]
    truth.facts["depth_head_moved"] = any(moved)
