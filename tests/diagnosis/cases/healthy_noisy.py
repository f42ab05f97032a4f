"""Healthy control, noisy: noisy labels, noisy gradients and a warm-up from lr 0.

Nothing is planted, but nothing is smooth either: batches of 2, ground truth with ±50 %
per-sample scale noise and 5 % of pixels at 3× their depth (multipath ghosts), dropout, a
heteroscedastic loss whose log-variance feeds ``exp``, and a linear warm-up ``lr = base ·
step / warmup`` that starts at exactly 0 (the first update is 0) and reaches the base rate
after 15 steps. Over the run the loss varies ×3 and the gradient norm ×10 from step to step;
the run still learns.
"""

from __future__ import annotations

import torch
from torch import nn

from tests.diagnosis.cases.probe import Probe, Truth
from tests.diagnosis.cases.scenes import Encoder, make_batch

STEPS, LR, WARMUP = 60, 0.01, 15


class NoisyDepthNet(nn.Module):
    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.encoder = Encoder(width)
        self.dropout = nn.Dropout2d(0.25)
        self.depth_head = nn.Conv2d(width, 1, 1)
        self.log_var_head = nn.Conv2d(width, 1, 1)

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        feat = self.dropout(self.encoder(image))
        return {"depth": nn.functional.softplus(self.depth_head(feat)) * 10,
                "log_var": self.log_var_head(feat)}


class UncertainDepthLoss(nn.Module):
    def forward(self, out: dict[str, torch.Tensor], depth: torch.Tensor,
                mask: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        err = (out["depth"] - depth).abs() / depth
        log_var = out["log_var"]
        parts = {"depth": (err * torch.exp(-log_var) * mask).sum() / mask.sum(),
                 "log_var": (0.5 * log_var * mask).sum() / mask.sum()}
        return parts["depth"] + parts["log_var"], parts


def train(probe: Probe, truth: Truth) -> None:
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(14)
    model, criterion = NoisyDepthNet(), UncertainDepthLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, s / WARMUP))
    probe.start(model, optimizer, criterion)
    losses: list[float] = []
    for step in range(STEPS):
        batch = make_batch(gen, n=2, holes=0.2)
        scale = 1 + 0.5 * (2 * torch.rand(2, 1, 1, 1, generator=gen) - 1)
        multipath = torch.rand(batch.depth.shape, generator=gen) < 0.05  # LiDAR ghosts
        scale = scale * (1 + 2 * multipath.float())
        out = model(batch.image)
        valid = batch.mask.sum(dim=(1, 2, 3))  # the loss divides by it
        probe.denominator("valid_pixels", valid, valid_count=valid)
        probe.tensor("log_var", out["log_var"], feeds_exp=True)
        probe.tensor("depth", out["depth"])
        loss, parts = criterion(out, batch.depth * scale, batch.mask)
        optimizer.zero_grad()
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        truth.first(step, not (torch.isfinite(loss) and torch.isfinite(norm)),
                    "a loss or gradient norm is not finite")
        lr = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
        probe.end_step(step, loss=loss, components=parts, grad_norm=norm, lr=lr)
        losses.append(loss.item())
        truth.steps = step + 1
    truth.facts["loss_range"] = max(losses) / min(losses)
    truth.facts["first_loss"] = sum(losses[:10]) / 10
    truth.facts["last_loss"] = sum(losses[-10:]) / 10
