"""Procedural depth scenes for the demo: a ground plane, a back wall and a few boxes.

Each sample is seen by one pinhole camera (y down, z forward). The ground truth is the
π³ "local points" map ``[x*z, y*z, z]`` with ``(x, y)`` the normalised ray of the pixel, so a
model that predicts ``(xy, z)`` has to get both the ray and the depth right. Depth spans the
1–80 m range real driving/indoor datasets mix, and the valid mask has holes (sensor dropouts,
sky) — optionally a whole sample with no valid pixel, the case that breaks mean-distance
normalisation downstream.

Everything is drawn with a ``torch.Generator`` so a seed fixes every batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["MAX_DEPTH", "MIN_DEPTH", "SceneBatch", "make_batch", "pixel_rays"]

MIN_DEPTH = 1.0  # metres; nearer returns are treated as invalid, as depth sensors do
MAX_DEPTH = 80.0  # metres; farther (or sky) is invalid


@dataclass(frozen=True)
class SceneBatch:
    """One batch: ``image`` [B,3,H,W] in [0,1], ``points`` [B,H,W,3], ``valid`` [B,H,W] bool."""

    image: torch.Tensor
    points: torch.Tensor
    valid: torch.Tensor


def pixel_rays(height: int, width: int) -> torch.Tensor:
    """Normalised rays ``(x, y)`` of each pixel, [H,W,2], for a ~60° horizontal field of view."""
    focal = 0.9 * width  # fixed intrinsics: the toy is about depth, not calibration
    v, u = torch.meshgrid(
        torch.arange(height, dtype=torch.float32),
        torch.arange(width, dtype=torch.float32),
        indexing="ij",
    )
    x = (u - (width - 1) / 2) / focal
    y = (v - (height - 1) / 2) / focal
    return torch.stack([x, y], dim=-1)


def _uniform(gen: torch.Generator, low: float, high: float) -> float:
    """One scalar in [low, high) drawn from ``gen`` (keeps the draw order explicit)."""
    return low + (high - low) * float(torch.rand((), generator=gen))


def _background(rays: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Depth [H,W] of the nearer of a ground plane and a turned back wall, and which one [H,W].

    Surface ids: 0 ground, 1 wall (boxes get 2 and up).
    """
    x, y = rays[..., 0], rays[..., 1]
    inf = torch.full_like(x, float("inf"))
    # Ground plane y = h (camera h metres above it): hit only by rays that look down.
    height = _uniform(gen, 1.0, 3.0)
    ground = torch.where(y > 1e-4, height / y.clamp(min=1e-4), inf)
    # Back wall n·X = d with n turned by a small yaw; far enough that part of it can pass 80 m.
    yaw = _uniform(gen, -0.5, 0.5)
    dist = _uniform(gen, 15.0, 90.0)
    facing = torch.sin(torch.tensor(yaw)) * x + torch.cos(torch.tensor(yaw))
    wall = torch.where(facing > 1e-4, dist / facing.clamp(min=1e-4), inf)
    return torch.minimum(ground, wall), (wall < ground).long()


def _add_boxes(depth: torch.Tensor, surface: torch.Tensor, gen: torch.Generator) -> None:
    """Paste 1–3 box faces (tilted planes in depth) in front of the background, in place."""
    height, width = depth.shape
    v, u = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    for box in range(int(torch.randint(1, 4, (), generator=gen))):
        top, left = (int(torch.randint(0, s - 6, (), generator=gen)) for s in (height, width))
        box_h, box_w = (int(torch.randint(5, s // 2, (), generator=gen)) for s in (height, width))
        near = _uniform(gen, MIN_DEPTH, 30.0)
        # A small depth gradient across the face, so normals are not all fronto-parallel.
        slope_u, slope_v = _uniform(gen, -0.3, 0.3), _uniform(gen, -0.3, 0.3)
        face = near * (1 + slope_u * (u - left) / width + slope_v * (v - top) / height)
        inside = (v >= top) & (v < top + box_h) & (u >= left) & (u < left + box_w)
        closer = inside & (face < depth) & (face > 0)
        depth[closer] = face[closer]
        surface[closer] = 2 + box


def _holes(height: int, width: int, gen: torch.Generator) -> torch.Tensor:
    """Invalid pixels [H,W] bool: 0–2 rectangular dropouts plus ~3 % scattered misses."""
    holes = torch.rand(height, width, generator=gen) < 0.03
    for _ in range(int(torch.randint(0, 3, (), generator=gen))):
        top, left = (int(torch.randint(0, s - 4, (), generator=gen)) for s in (height, width))
        size = int(torch.randint(2, 8, (), generator=gen))
        holes[top : top + size, left : left + size] = True
    return holes


def _render(depth: torch.Tensor, surface: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """A [3,H,W] image: flat colour per surface, fogged with distance, plus a little noise.

    The fog is the depth cue the tiny net can actually learn from one image.
    """
    palette = 0.3 + 0.7 * torch.rand(8, 3, generator=gen)
    colour = palette[surface.clamp(max=7)]  # [H,W,3]
    fog = torch.exp(-depth.clamp(max=200.0) / 40.0).unsqueeze(-1)
    sky = torch.tensor([0.7, 0.8, 1.0])
    image = fog * colour + (1 - fog) * sky
    image = image + 0.02 * torch.randn(image.shape, generator=gen)
    return image.clamp(0, 1).permute(2, 0, 1)


def make_batch(
    gen: torch.Generator,
    batch_size: int = 8,
    height: int = 32,
    width: int = 32,
    *,
    empty_sample: bool = False,
) -> SceneBatch:
    """Draw ``batch_size`` scenes from ``gen``.

    ``empty_sample=True`` wipes the valid mask of the last sample — a frame whose depth
    failed entirely — to reproduce the 0/ε normalisation NaN downstream.
    """
    rays = pixel_rays(height, width)
    images, points, valids = [], [], []
    for _ in range(batch_size):
        depth, surface = _background(rays, gen)
        _add_boxes(depth, surface, gen)
        valid = (depth >= MIN_DEPTH) & (depth <= MAX_DEPTH) & ~_holes(height, width, gen)
        images.append(_render(depth, surface, gen))
        # Invalid pixels keep a finite placeholder depth so the GT tensor has no Inf in it.
        z = torch.where(valid, depth, torch.zeros_like(depth))
        points.append(torch.cat([rays * z.unsqueeze(-1), z.unsqueeze(-1)], dim=-1))
        valids.append(valid)
    valid_all = torch.stack(valids)
    if empty_sample:
        valid_all[-1] = False
    return SceneBatch(torch.stack(images), torch.stack(points), valid_all)
