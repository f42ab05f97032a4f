"""A one-step learning-rate spike from a buggy scheduler.

The scheduler keeps the learning rate per sample and scales it by ``1 / len(dataset)``; the
dataset length it caches is reset at each epoch boundary and read before it is filled in, so
the first step of the second epoch divides by 1 instead of 300 — the learning rate is ×300 for
one step. With SGD that one update throws the weights far off and the loss jumps on the
steps after it.
"""

from __future__ import annotations

import torch
from torch import nn

from tests.diagnosis.cases.probe import Probe, Truth
from tests.diagnosis.cases.scenes import Encoder, make_batch

STEPS_PER_EPOCH, EPOCHS, DATASET = 30, 2, 300
BASE_LR = 0.05 * DATASET  # per-sample rate × dataset length: 0.05 per step


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


class PerSampleSchedule:
    """lr = BASE_LR / len(dataset), the length cached per epoch (the bug: read too early)."""

    def __init__(self) -> None:
        self.cached_len: int | None = None

    def factor(self, step: int) -> float:
        if step % STEPS_PER_EPOCH == 0:
            self.cached_len = None  # a new epoch: the loader will tell us its length...
        length = self.cached_len or 1  # ...but it is read before the loader filled it in
        self.cached_len = DATASET
        return 1.0 / length if step > 0 else 1.0 / DATASET


def train(probe: Probe, truth: Truth) -> None:
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(7)
    model, criterion = DepthNet(), RelDepthLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=BASE_LR, momentum=0.9)
    schedule = PerSampleSchedule()
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule.factor)
    probe.start(model, optimizer, criterion)
    lrs: list[float] = []
    for step in range(STEPS_PER_EPOCH * EPOCHS):
        batch = make_batch(gen)
        out = model(batch.image)
        valid = batch.mask.sum(dim=(1, 2, 3))  # the loss divides by it
        probe.denominator("valid_pixels", valid, valid_count=valid)
        probe.tensor("depth", out["depth"])
        loss, parts = criterion(out, batch.depth, batch.mask)
        lr = optimizer.param_groups[0]["lr"]
        lrs.append(lr)
        truth.first(step, step > 0 and lr > 100 * lrs[-2], "the lr used jumped over ×100")
        optimizer.zero_grad()
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        probe.end_step(step, loss=loss, components=parts, grad_norm=norm, lr=lr)
        truth.steps = step + 1
        truth.facts.setdefault("loss", []).append(loss.item())
    truth.facts["lr"] = lrs
