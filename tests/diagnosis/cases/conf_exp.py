"""exp overflow in a confidence head: the log-confidence regulariser is not masked.

DUSt3R-style confidence: ``conf = 1 + exp(raw)`` weights the depth error and ``-α·log(conf)``
keeps it from collapsing. The author masks the error (``err * mask``) but not the regulariser,
so on invalid pixels (the sky rows, where the error is 0 by the mask) the only gradient says
"more confidence": ``raw`` climbs every step until ``exp`` overflows float32 (raw > 88.72),
``conf`` is +Inf and the loss NaN. The trainer aborts on a non-finite loss, as π³'s does,
after logging the step.
"""

from __future__ import annotations

import torch
from torch import nn

from tests.diagnosis.cases.probe import Probe, TrainingAborted, Truth
from tests.diagnosis.cases.scenes import Encoder, make_batch

STEPS, ALPHA, SKY_ROWS = 200, 1.0, 2


class ConfHead(nn.Module):
    """Per-pixel confidence, always > 1."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(width, 1, 1)

    def forward(self, feat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raw = self.conv(feat)
        return 1 + torch.exp(raw), raw


class DepthConfNet(nn.Module):
    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.encoder = Encoder(width)
        self.depth_head = nn.Conv2d(width, 1, 1)
        self.conf_head = ConfHead(width)

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        feat = self.encoder(image)
        conf, conf_raw = self.conf_head(feat)
        return {"depth": nn.functional.softplus(self.depth_head(feat)) * 10, "conf": conf,
                "conf_raw": conf_raw}


class ConfLoss(nn.Module):
    def forward(self, out: dict[str, torch.Tensor], depth: torch.Tensor,
                mask: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        err = (out["depth"] - depth).abs() / depth * mask
        parts = {"conf_depth": (out["conf"] * err).mean(),
                 "conf_reg": -ALPHA * torch.log(out["conf"]).mean()}  # not masked: the bug
        return parts["conf_depth"] + parts["conf_reg"], parts


def train(probe: Probe, truth: Truth) -> None:
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    model, criterion = DepthConfNet(), ConfLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    probe.start(model, optimizer, criterion)
    for step in range(STEPS):
        batch = make_batch(gen)
        batch.mask[:, :, :SKY_ROWS] = 0.0  # sky: no depth measurement
        batch.image[:, 0, :SKY_ROWS] = -1.0  # the sky is bright
        out = model(batch.image)
        probe.tensor("conf_raw", out["conf_raw"], feeds_exp=True)
        probe.tensor("conf", out["conf"])
        loss, parts = criterion(out, batch.depth, batch.mask)
        truth.steps = step + 1
        truth.first(step, ~torch.isfinite(out["conf"]).all(), "conf holds +Inf")
        if not torch.isfinite(loss):
            probe.end_step(step, loss=loss, components=parts, lr=0.05)
            raise TrainingAborted(f"non-finite loss at step {step}: {loss.item()}")
        optimizer.zero_grad()
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        optimizer.step()
        probe.end_step(step, loss=loss, components=parts, grad_norm=norm, lr=0.05)
