"""A π³-like loss: scale-normalised GT, inverse-depth-weighted L1 on local points, normals.

Written the way the original is, including its weak spot: the GT is divided by its mean
distance over valid pixels, with only an ε added to the valid-pixel count. A sample with no
valid pixel gets scale ``0/ε = 0``, its points become ``0/0 = NaN``, and masking by
multiplication (``NaN * 0 = NaN``) carries the NaN into the total. That is left visible on
purpose; the scale and valid counts are returned so a monitor can watch them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F

__all__ = ["LossOutput", "normal_loss", "normalise_gt", "pi3_loss", "points_loss"]

EPS = 1e-8


@dataclass(frozen=True)
class LossOutput:
    """``total`` (0-d) = sum of ``components`` (0-d each); ``gt_scale``/``valid_count`` are [B]."""

    total: torch.Tensor
    components: dict[str, torch.Tensor]
    gt_scale: torch.Tensor
    valid_count: torch.Tensor


def normalise_gt(
    points: torch.Tensor, valid: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """GT points [B,H,W,3] divided by their mean distance over valid pixels.

    Returns ``(normalised, scale [B], valid_count [B])``. No guard beyond ε: an empty sample
    yields scale 0 and NaN points (see the module docstring).
    """
    mask = valid.to(points.dtype)
    count = mask.sum(dim=(1, 2))
    scale = (points.norm(dim=-1) * mask).sum(dim=(1, 2)) / (count + EPS)
    return points / scale.view(-1, 1, 1, 1), scale, count


def _inverse_depth_weight(gt: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Per-pixel weight ``1 / z_gt`` [B,H,W], with z floored at 0.1x the sample's mean depth.

    As in π³: near pixels count more, but not unboundedly (a 1 m pixel in an 80 m scene would
    otherwise weigh 80x). Invalid pixels (z_gt = 0) get the floor too; they are masked later.
    """
    mask = valid.to(gt.dtype)
    z = gt[..., 2]
    mean_z = (z * mask).sum(dim=(1, 2), keepdim=True) / (mask.sum(dim=(1, 2), keepdim=True) + EPS)
    return 1.0 / (z.maximum(0.1 * mean_z) + 1e-6)


def points_loss(pred: torch.Tensor, gt: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean over valid pixels and xyz of ``|pred - gt| / z_gt``: roughly a relative error."""
    mask = valid.to(pred.dtype)
    err = (pred - gt).abs().mean(dim=-1) * _inverse_depth_weight(gt, valid)
    return (err * mask).sum() / mask.sum().clamp(min=1.0)


def _normals(points: torch.Tensor) -> torch.Tensor:
    """Unit normals [B,H-1,W-1,3] from the cross product of right and down neighbour differences."""
    right = points[:, :-1, 1:] - points[:, :-1, :-1]
    down = points[:, 1:, :-1] - points[:, :-1, :-1]
    return F.normalize(torch.cross(right, down, dim=-1), dim=-1, eps=1e-6)


def normal_loss(pred: torch.Tensor, gt: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean ``1 - cos`` between predicted and GT normals where all three pixels are valid.

    Bounded in [0, 2], so it cannot by itself push the total past the clip threshold.
    """
    both = valid[:, :-1, :-1] & valid[:, :-1, 1:] & valid[:, 1:, :-1]
    mask = both.to(pred.dtype)
    cos = (_normals(pred) * _normals(gt)).sum(dim=-1)
    return ((1.0 - cos) * mask).sum() / mask.sum().clamp(min=1.0)


def pi3_loss(pred_points: torch.Tensor, gt_points: torch.Tensor, valid: torch.Tensor) -> LossOutput:
    """The full loss on predicted local points [B,H,W,3] against raw-metre GT points."""
    gt, scale, count = normalise_gt(gt_points, valid)
    components = {
        "points": points_loss(pred_points, gt, valid),
        "normal": normal_loss(pred_points, gt, valid),
    }
    total = torch.stack(list(components.values())).sum()
    return LossOutput(total=total, components=components, gt_scale=scale, valid_count=count)
