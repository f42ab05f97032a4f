"""sqrt of a negative variance in a hand-written normalisation layer.

The author's instance norm computes the variance in one pass, ``E[x²] − E[x]²``, and divides
by ``sqrt(var) + eps``. On a normal frame that is fine. At one step the loader hands out a
burst of overexposed frames (every channel saturated at 1.0, a little sensor noise): each channel's
features are nearly constant, the true variance is far below float32's rounding of
``E[x²]``, the difference comes out slightly negative in some channels and ``sqrt`` returns
NaN. (Over 200 draws of such a batch at least one of its 32 channels always came out
negative.) The trainer aborts on a non-finite loss after logging the step.
"""

from __future__ import annotations

import torch
from torch import nn

from tests.diagnosis.cases.probe import Probe, TrainingAborted, Truth
from tests.diagnosis.cases.scenes import make_batch

STEPS, LR, BAD_STEP = 40, 0.01, 30


class FastInstanceNorm(nn.Module):
    """Normalises each channel over the image, in one pass over the data."""

    def __init__(self, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=(2, 3), keepdim=True)
        var = (x * x).mean(dim=(2, 3), keepdim=True) - mean * mean
        return (x - mean) / (torch.sqrt(var) + self.eps)


class NormDepthNet(nn.Module):
    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, padding=1, padding_mode="replicate")
        self.norm = FastInstanceNorm()
        self.conv2 = nn.Conv2d(width, width, 1)
        self.depth_head = nn.Conv2d(width, 1, 1)

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        feat = torch.relu(self.conv2(torch.relu(self.norm(self.conv1(image)))))
        return {"depth": nn.functional.softplus(self.depth_head(feat)) * 10}


class DepthLoss(nn.Module):
    def forward(self, out: dict[str, torch.Tensor], depth: torch.Tensor,
                mask: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        parts = {"rel_err": ((out["depth"] - depth).abs() / depth * mask).mean()}
        return parts["rel_err"], parts


def train(probe: Probe, truth: Truth) -> None:
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(3)
    model, criterion = NormDepthNet(), DepthLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    probe.start(model, optimizer, criterion)
    for step in range(STEPS):
        batch = make_batch(gen)
        if step == BAD_STEP:  # a burst of overexposed frames: saturated, a little noise
            batch.image = 1.0 + 1e-4 * torch.randn(batch.image.shape, generator=gen)
        out = model(batch.image)
        probe.tensor("depth", out["depth"])
        loss, parts = criterion(out, batch.depth, batch.mask)
        truth.steps = step + 1
        truth.first(step, torch.isnan(out["depth"]).any(), "the predicted depth holds NaN")
        if not torch.isfinite(loss):
            probe.end_step(step, loss=loss, components=parts, lr=LR)
            raise TrainingAborted(f"non-finite loss at step {step}: {loss.item()}")
        optimizer.zero_grad()
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        probe.end_step(step, loss=loss, components=parts, grad_norm=norm, lr=LR)
