"""A tiny conv net with a π³-style point head: ``xy`` and log-depth ``z_raw`` per pixel.

The head mirrors the failing model: ``z = act(z_raw)`` and ``local_points = [xy*z, z]``. With
``act = exp`` the gradient w.r.t. ``z_raw`` is ``z`` itself, so one large step in ``z_raw``
multiplies depth (and the loss) by ``e^Δ`` — the road to both the silent stall and overflow.
"""

from __future__ import annotations

import math
from typing import Literal, get_args

import torch
from torch import nn
from torch.nn import functional as F

from trainvitals.demo.scenes import pixel_rays

__all__ = ["DepthActivation", "PointMapNet", "apply_depth_activation", "uses_exp"]

DepthActivation = Literal["exp", "softplus", "exp_clamp"]

EXP_CLAMP_MAX = 15.0  # π³X clamps z_raw here: exp(15) ≈ 3.3e6 stays far from float32's overflow


def apply_depth_activation(z_raw: torch.Tensor, activation: DepthActivation) -> torch.Tensor:
    """Positive depth from the raw head output, the three ways the model family does it."""
    if activation == "exp":
        return torch.exp(z_raw)
    if activation == "softplus":
        return F.softplus(z_raw)  # gradient ≤ 1: a big step moves depth linearly, not e^Δ
    if activation == "exp_clamp":
        return torch.exp(z_raw.clamp(max=EXP_CLAMP_MAX))
    choices = get_args(DepthActivation)
    raise ValueError(f"unknown depth activation {activation!r}; want one of {choices}")


def uses_exp(activation: DepthActivation) -> bool:
    """Whether ``z_raw`` goes through an exponential (the overflow-risk flag for the monitor)."""
    return activation in ("exp", "exp_clamp")


def _inverse_activation(depth: float, activation: DepthActivation) -> float:
    """The ``z_raw`` that gives ``depth``: used to start the head at a sensible depth."""
    if activation == "softplus":
        return math.log(math.expm1(depth))
    return math.log(depth)


class PointMapNet(nn.Module):
    """Conv encoder → 3-channel head ``(xy, z_raw)``; returns a dict like π³'s forward.

    Pixel coordinates are fed in as two extra channels (CoordConv): π³'s transformer knows
    where each patch is from its positional embedding, a plain conv net would not, and the
    ``xy`` half of the head cannot be learnt without it.
    """

    def __init__(
        self,
        activation: DepthActivation = "exp",
        width: int = 16,
        init_depth: float = 1.0,
    ) -> None:
        super().__init__()
        self.activation: DepthActivation = activation
        self.body = nn.Sequential(
            nn.Conv2d(5, width, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=2, dilation=2),
            nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=4, dilation=4),
            nn.ReLU(),
        )
        self.head = nn.Conv2d(width, 3, 1)
        # Start near the normalised scene scale (mean distance 1), as a pretrained head would.
        with torch.no_grad():
            self.head.weight.mul_(0.1)
            bias = self.head_bias()
            bias.zero_()
            bias[2] = _inverse_activation(init_depth, activation)

    def head_bias(self) -> torch.Tensor:
        """The head's bias; entry 2 is the constant offset of ``z_raw`` (log-depth under exp)."""
        bias = self.head.bias
        if bias is None:  # the head is built with a bias; this narrows the type
            raise RuntimeError("point head has no bias")
        return bias

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """``image`` [B,3,H,W] → ``xy`` [B,H,W,2], ``z_raw``/``depth`` [B,H,W], ``local_points``."""
        batch, _, height, width = image.shape
        coords = pixel_rays(height, width).to(image).permute(2, 0, 1).expand(batch, -1, -1, -1)
        out = self.head(self.body(torch.cat([image, coords], dim=1))).permute(0, 2, 3, 1)
        xy, z_raw = out[..., :2], out[..., 2]
        depth = apply_depth_activation(z_raw, self.activation)
        local_points = torch.cat([xy * depth.unsqueeze(-1), depth.unsqueeze(-1)], dim=-1)
        return {"xy": xy, "z_raw": z_raw, "depth": depth, "local_points": local_points}
