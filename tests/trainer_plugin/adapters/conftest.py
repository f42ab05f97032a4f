"""Fixtures for the adapter tests: a planted fault in a loss module, and the story the server
must then tell (steps, raw vs used loss, clip events, zero gradients, the stall alert).

The servers, monitors and ``rest`` come from ``tests/trainer_plugin/conftest.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from torch import nn

from trainvitals.server import ServerThread

THRESHOLD = 10.0  # the trainer's ×0 clip
STEPS = 8
CLIP_FROM = 4  # the loss module's output passes the threshold from this optimizer step on
STALL_STEPS = 3


class PlantedLoss(nn.Module):
    """MSE, ×1000 from training call ``CLIP_FROM`` on: a finite loss far above the threshold,
    the π³ trainer's silent-stall trigger. Calls without grad (validation) are not counted."""

    def __init__(self, clip_from: int = CLIP_FROM) -> None:
        super().__init__()
        self.clip_from, self.calls = clip_from, 0

    def forward(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        loss = nn.functional.mse_loss(prediction, target)
        if torch.is_grad_enabled():
            self.calls += 1
            if self.calls > self.clip_from:
                return loss * 1000.0
        return loss


@dataclass
class Told:
    """What the server says about one run (rank 0 unless asked)."""

    run: dict[str, Any]
    series: dict[str, dict[int, float]]
    clips: list[dict[str, Any]]
    alerts: list[dict[str, Any]]


@pytest.fixture
def planted_loss() -> Callable[..., PlantedLoss]:
    return PlantedLoss


@pytest.fixture
def stall_server(start_server: Callable[..., ServerThread]) -> ServerThread:
    """A server whose stall rule fires after ``STALL_STEPS`` zeroed steps."""
    return start_server(stall_steps=STALL_STEPS)


@pytest.fixture
def told(rest: Callable[..., Any]) -> Callable[..., Told]:
    """Reads a run back through the REST API."""
    def read(srv: ServerThread, name: str, *names: str, rank: int = 0) -> Told:
        (run,) = [r for r in rest(srv, "/runs")["runs"] if r["name"] == name]
        wanted = names or ("loss", "loss_used", "grad_norm", "grad_norm_post", "lr")
        found = rest(srv, f"/runs/{run['id']}/series", name=list(wanted), rank=rank)["series"]
        series = {s["name"]: dict(zip(s["steps"], s["values"], strict=True)) for s in found}
        clips = [c for c in rest(srv, f"/runs/{run['id']}/clips")["clips"] if c["rank"] == rank]
        alerts = rest(srv, "/alerts", run=name)["alerts"]
        return Told(run, series, clips, alerts)

    return read


@pytest.fixture
def assert_clip_story() -> Callable[[Told], None]:
    """The planted fault, as the server must show it after ``STEPS`` optimizer steps."""
    def check(t: Told, steps: int = STEPS, clip_from: int = CLIP_FROM, *,
              guarded: bool = True) -> None:
        """``guarded=False``: the trainer kept its own ``if``; no clip events are claimed."""
        loss, used, grad = t.series["loss"], t.series["loss_used"], t.series["grad_norm"]
        assert sorted(loss) == list(range(steps))
        assert sorted(used) == list(range(steps))
        for step in range(steps):
            if step < clip_from:
                assert 0 < loss[step] < THRESHOLD
                assert used[step] == pytest.approx(loss[step])
                assert grad[step] > 0
            else:
                assert loss[step] > THRESHOLD and used[step] == 0.0
                assert grad[step] == 0.0  # the zeroed loss leaves nothing to learn
        assert [c["step"] for c in t.clips] == (list(range(clip_from, steps)) if guarded else [])
        for clip in t.clips:
            assert (clip["action"], clip["reason"]) == ("zeroed", "above_threshold")
            assert clip["raw"] == pytest.approx(loss[clip["step"]])
            assert clip["threshold"] == THRESHOLD
        stalls = [a for a in t.alerts if a["rule"] == "stall"]
        assert stalls and stalls[0]["first_step"] == clip_from
        assert t.run["status"] == "finished"

    return check


def make_data(n: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 4, generator=gen), torch.randn(n, 1, generator=gen)


@pytest.fixture
def data() -> tuple[torch.Tensor, torch.Tensor]:
    return make_data()


@pytest.fixture
def small_model() -> Callable[[], nn.Module]:
    def make() -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))

    return make
