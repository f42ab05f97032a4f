"""A frozen module by omission: the normal head is left out of the optimizer.

The author builds the optimizer from an explicit list, ``encoder`` and ``depth_head``, and
adds a normal head later without adding it to the list. Its gradients are computed every step
(and, since ``optimizer.zero_grad()`` only clears the optimizer's own parameters, they pile
up), but its weights never change: the normal loss only improves through the shared encoder.
"""

from __future__ import annotations

import torch
from torch import nn

from tests.diagnosis.cases.probe import Probe, Truth
from tests.diagnosis.cases.scenes import Encoder, make_batch

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


class DepthNormalLoss(nn.Module):
    def forward(self, out: dict[str, torch.Tensor], depth: torch.Tensor,
                mask: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        gt_normals = torch.zeros_like(out["normals"])
        gt_normals[:, 2] = 1.0
        parts = {"depth": ((out["depth"] - depth).abs() / depth * mask).sum() / mask.sum(),
                 "normal": (1 - (out["normals"] * gt_normals).sum(1)).mean()}
        return parts["depth"] + parts["normal"], parts


def train(probe: Probe, truth: Truth) -> None:
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(11)
    model, criterion = DepthNormalNet(), DepthNormalLoss()
    optimizer = torch.optim.Adam([*model.encoder.parameters(),
                                  *model.depth_head.parameters()], lr=LR)
    probe.start(model, optimizer, criterion)
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
        before = [p.detach().clone() for p in model.normal_head.parameters()]
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        got_grad = all(p.grad is not None and bool(p.grad.abs().sum() > 0)
                       for p in model.normal_head.parameters())
        still = all(torch.equal(a, b) for a, b in zip(before, model.normal_head.parameters(),
                                                      strict=True))
        truth.first(step, got_grad and still,
                    "model.normal_head has gradients but the optimizer step leaves it unchanged")
        probe.end_step(step, loss=loss, components=parts, grad_norm=norm, lr=LR)
        truth.steps = step + 1
