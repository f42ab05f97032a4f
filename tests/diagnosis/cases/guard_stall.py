"""A loss guard that zeroes the loss after the loss jumps: the silent stall.

The trainer keeps π³'s guard, ``if loss > clip_loss: loss = loss * 0.0`` with ``clip_loss =
10``. For the first steps the curriculum serves near indoor scenes (1–10 m) and the L1 depth
loss in metres stays around 1–3. Then it switches to the outdoor scenes (20–80 m): the raw loss
is ~30, every step is zeroed, the gradients are exactly 0 and the network never adapts — the
log shows a loss of 0.0 and the run looks alive.
"""

from __future__ import annotations

import torch
from torch import nn

from tests.diagnosis.cases.probe import Probe, Truth
from tests.diagnosis.cases.scenes import Encoder, make_batch

STEPS, LR, OUTDOOR_STEP, CLIP_LOSS = 50, 0.01, 25, 10.0


class DepthNet(nn.Module):
    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.encoder = Encoder(width)
        self.depth_head = nn.Conv2d(width, 1, 1)

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        raw = self.depth_head(self.encoder(image))
        return {"depth_raw": raw, "depth": nn.functional.softplus(raw) * 3}


class DepthNormalLoss(nn.Module):
    def forward(self, out: dict[str, torch.Tensor], depth: torch.Tensor,
                mask: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        pred = out["depth"]
        grad_pred = pred[..., 1:] - pred[..., :-1]
        grad_gt = depth[..., 1:] - depth[..., :-1]
        parts = {"depth": ((pred - depth).abs() * mask).sum() / mask.sum(),
                 "gradient": (grad_pred - grad_gt).abs().mean()}
        return parts["depth"] + parts["gradient"], parts


def train(probe: Probe, truth: Truth) -> None:
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(8)
    model, criterion = DepthNet(), DepthNormalLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    probe.start(model, optimizer, criterion)
    zeroed = 0
    for step in range(STEPS):
        outdoor = step >= OUTDOOR_STEP
        batch = make_batch(gen, near=20.0 if outdoor else 1.0, far=80.0 if outdoor else 10.0)
        out = model(batch.image)
        valid = batch.mask.sum(dim=(1, 2, 3))  # the loss divides by it
        probe.denominator("valid_pixels", valid, valid_count=valid)
        probe.tensor("depth_raw", out["depth_raw"])
        probe.tensor("depth", out["depth"])
        raw_loss, parts = criterion(out, batch.depth, batch.mask)
        truth.first(step, raw_loss > CLIP_LOSS, f"the raw loss exceeds clip_loss = {CLIP_LOSS:g}")
        loss = probe.guard(raw_loss, CLIP_LOSS, parts)  # was: if loss > clip: loss = loss * 0.0
        zeroed += int(loss.item() == 0.0)
        optimizer.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        probe.end_step(step, components=parts, grad_norm=norm, lr=LR)
        truth.steps = step + 1
    truth.facts["zeroed_steps"] = zeroed
