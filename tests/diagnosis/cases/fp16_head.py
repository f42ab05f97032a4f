"""float16 overflow: a depth head run under float16 autocast, ground truth in millimetres.

The author moved the depth head under ``torch.autocast(dtype=torch.float16)`` to save memory;
``raw`` comes out in float16 and ``exp(raw)`` stays float16, whose largest value is 65504
(``exp`` overflows above ln 65504 ≈ 11.09). The depth maps come from 16-bit PNGs in
millimetres: the far planes are 30–60 m, 30,000–60,000 mm, log-depth 10.3–11.0. As the
network learns them ``raw`` climbs past 11.09 on the farthest pixels and ``exp`` returns +Inf
— in float32 it would have been fine. The trainer aborts on a non-finite loss after logging
the step.
"""

from __future__ import annotations

import torch
from torch import nn

from tests.diagnosis.cases.probe import Probe, TrainingAborted, Truth
from tests.diagnosis.cases.scenes import Encoder, make_batch

STEPS, LR = 80, 0.02


class DepthHead(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(width, 1, 1)

    def forward(self, feat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.autocast("cpu", dtype=torch.float16):
            raw = self.conv(feat)
        return torch.exp(raw), raw


class HalfHeadNet(nn.Module):
    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.encoder = Encoder(width)
        self.depth_head = DepthHead(width)

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        depth, raw = self.depth_head(self.encoder(image))
        return {"depth": depth, "depth_raw": raw}


class LogDepthLoss(nn.Module):
    def forward(self, out: dict[str, torch.Tensor], depth_mm: torch.Tensor,
                mask: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        err = (torch.log(out["depth"].float()) - torch.log(depth_mm)).abs() * mask
        parts = {"log_depth": err.sum() / mask.sum()}
        return parts["log_depth"], parts


def train(probe: Probe, truth: Truth) -> None:
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(4)
    model, criterion = HalfHeadNet(), LogDepthLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    probe.start(model, optimizer, criterion)
    for step in range(STEPS):
        batch = make_batch(gen, near=30.0, far=60.0)
        depth_mm = batch.depth * 1000.0  # the PNGs store millimetres
        out = model(batch.image)
        valid = batch.mask.sum(dim=(1, 2, 3))  # the loss divides by it
        probe.denominator("valid_pixels", valid, valid_count=valid)
        probe.tensor("depth_raw", out["depth_raw"], feeds_exp=True)
        probe.tensor("depth", out["depth"])
        loss, parts = criterion(out, depth_mm, batch.mask)
        truth.steps = step + 1
        truth.first(step, torch.isinf(out["depth"]).any(), "the float16 depth holds +Inf")
        if not torch.isfinite(loss):
            probe.end_step(step, loss=loss, components=parts, lr=LR)
            raise TrainingAborted(f"non-finite loss at step {step}: {loss.item()}")
        optimizer.zero_grad()
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        probe.end_step(step, loss=loss, components=parts, grad_norm=norm, lr=LR)
