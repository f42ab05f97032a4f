"""Exploding gradients held by clipping: ``clip_grad_norm_(…, 1.0)`` hides the explosion.

After a warm-up the trainer switches on an edge-aware smoothness term. Its weight was meant
to be ``1e-3`` and was typed ``1e3``. From that step the pre-clip gradient norm is thousands
of times larger than before; ``clip_grad_norm_`` scales every update back to norm 1, the
trainer logs the post-clip norm (always ≤ 1) and nothing looks wrong, while the depth term
barely trains any more.
"""

from __future__ import annotations

import torch
from torch import nn

from tests.diagnosis.cases.probe import Probe, Truth
from tests.diagnosis.cases.scenes import Encoder, make_batch

STEPS, LR, SMOOTH_FROM, SMOOTH_WEIGHT, EXPLODED = 45, 0.01, 30, 1e3, 100.0


class DepthNet(nn.Module):
    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.encoder = Encoder(width)
        self.depth_head = nn.Conv2d(width, 1, 1)

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"depth": nn.functional.softplus(self.depth_head(self.encoder(image))) * 10}


class SmoothDepthLoss(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.smooth_weight = 0.0  # switched on after the warm-up

    def forward(self, out: dict[str, torch.Tensor], image: torch.Tensor, depth: torch.Tensor,
                mask: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        pred = out["depth"]
        edge = torch.exp(-(image[:, :1, :, 1:] - image[:, :1, :, :-1]).abs())
        parts = {"depth": ((pred - depth).abs() / depth * mask).sum() / mask.sum(),
                 "smooth": self.smooth_weight
                 * (edge * (pred[..., 1:] - pred[..., :-1]).abs()).mean()}
        return parts["depth"] + parts["smooth"], parts


def train(probe: Probe, truth: Truth) -> None:
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(9)
    model, criterion = DepthNet(), SmoothDepthLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    probe.start(model, optimizer, criterion)
    norms: list[float] = []
    for step in range(STEPS):
        if step == SMOOTH_FROM:
            criterion.smooth_weight = SMOOTH_WEIGHT  # meant: 1e-3
        batch = make_batch(gen)
        out = model(batch.image)
        valid = batch.mask.sum(dim=(1, 2, 3))  # the loss divides by it
        probe.denominator("valid_pixels", valid, valid_count=valid)
        probe.tensor("depth", out["depth"])
        loss, parts = criterion(out, batch.image, batch.depth, batch.mask)
        optimizer.zero_grad()
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        norms.append(norm.item())
        early = sorted(norms[:10])[5] if len(norms) > 10 else None
        truth.first(step, early is not None and norms[-1] > EXPLODED * early,
                    f"the pre-clip gradient norm exceeds ×{EXPLODED:g} its early median")
        optimizer.step()
        probe.end_step(step, loss=loss, components=parts, grad_norm=norm, lr=LR)
        truth.steps = step + 1
    truth.facts["norms"] = norms
