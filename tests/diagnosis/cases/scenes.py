"""Tiny procedural scenes shared by the cases: what a data loader of the π³ family hands out.

Each sample is a slanted plane seen by an 8×8 camera: a depth map in metres (``near``…``far``),
a valid mask (pixels with a depth measurement) and an image the network can read depth from
(inverse depth, pixel coordinates, a little noise). Everything is drawn from the case's own
``torch.Generator``: a case is deterministic for its seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["SIZE", "Batch", "Encoder", "make_batch"]

SIZE = 8


@dataclass
class Batch:
    """One step's data: ``image`` (n, 3, H, W), ``depth`` and ``mask`` (n, 1, H, W)."""

    image: torch.Tensor
    depth: torch.Tensor
    mask: torch.Tensor


def make_batch(gen: torch.Generator, n: int = 4, *, near: float = 1.0, far: float = 80.0,
               holes: float = 0.1) -> Batch:
    """``n`` planes with depth in [near, far] and a fraction ``holes`` of invalid pixels."""
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, SIZE), torch.linspace(-1, 1, SIZE),
                            indexing="ij")
    base = near + (far - near) * (0.1 + 0.6 * torch.rand(n, 1, 1, generator=gen))
    tilt = 0.2 * (torch.rand(n, 2, 1, 1, generator=gen) - 0.5)
    depth = (base * (1 + tilt[:, 0] * xs + tilt[:, 1] * ys)).clamp(near, far).unsqueeze(1)
    mask = (torch.rand(n, 1, SIZE, SIZE, generator=gen) >= holes).float()
    noise = 0.01 * torch.randn(n, 1, SIZE, SIZE, generator=gen)
    image = torch.cat([near / depth + noise, xs.expand(n, 1, SIZE, SIZE),
                       ys.expand(n, 1, SIZE, SIZE)], dim=1)
    return Batch(image, depth, mask)


class Encoder(nn.Module):
    """Two convolutions: the backbone every case's model starts with."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, width, 1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv2(torch.relu(self.conv1(image))))
