"""Scenes are seeded and in range; the loss's empty-sample NaN is real and visible."""

from __future__ import annotations

import math

import torch

from trainvitals.demo.loss import pi3_loss
from trainvitals.demo.model import PointMapNet, apply_depth_activation
from trainvitals.demo.scenes import MAX_DEPTH, MIN_DEPTH, SceneBatch, make_batch, pixel_rays


def _batch(seed: int = 0, **kwargs: bool) -> SceneBatch:
    return make_batch(torch.Generator().manual_seed(seed), 4, 32, 32, **kwargs)


def test_scenes_are_seeded_in_range_and_have_holes() -> None:
    a, b = _batch(), _batch()
    assert torch.equal(a.image, b.image) and torch.equal(a.points, b.points)
    assert a.image.shape == (4, 3, 32, 32) and a.points.shape == (4, 32, 32, 3)
    z = a.points[..., 2][a.valid]
    assert z.min() >= MIN_DEPTH and z.max() <= MAX_DEPTH
    assert 0.3 < a.valid.float().mean() < 1.0  # holes, but mostly valid
    rays = pixel_rays(32, 32)
    # local points are [x*z, y*z, z] of the pinhole rays
    assert torch.allclose(a.points[..., :2], rays * a.points[..., 2:], atol=1e-5)


def test_empty_sample_turns_the_loss_nan_through_the_scale() -> None:
    batch = _batch(empty_sample=True)
    assert not batch.valid[-1].any()
    pred = PointMapNet()(batch.image)["local_points"]
    out = pi3_loss(pred, batch.points, batch.valid)
    assert out.gt_scale[-1] == 0 and out.valid_count[-1] == 0
    assert math.isnan(out.total.item())
    healthy = pi3_loss(pred[:-1], batch.points[:-1], batch.valid[:-1])
    assert math.isfinite(healthy.total.item()) and set(healthy.components) == {"points", "normal"}


def test_depth_activations() -> None:
    z = torch.tensor([0.0, 20.0, 100.0])
    assert torch.isinf(apply_depth_activation(z, "exp")[2])
    clamped = apply_depth_activation(z, "exp_clamp")[2]
    assert torch.isclose(clamped, torch.tensor(math.exp(15.0)))
    assert torch.isfinite(apply_depth_activation(z, "softplus")).all()
