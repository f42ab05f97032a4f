"""Mixed precision: float16 autocast with a GradScaler, bfloat16 autocast, on the CPU.

A GradScaler skips the optimizer step while it searches for its scale (here from 2**24, far
too high for float16 gradients): those steps are data (``amp/skipped``, ``amp/scale``), not an
incident. What is one: skipping that never ends, or a non-finite value in the forward.
Against a real server; the CUDA path (``torch.amp.GradScaler("cuda")``) is the same code but
unproven here (no GPU).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

from trainvitals import Monitor, attach
from trainvitals.protocol.series import AMP_SCALE, AMP_SKIPPED, scalar_series

from .conftest import Told

STEPS = 40
SKIPPED, SCALE = scalar_series(AMP_SKIPPED), scalar_series(AMP_SCALE)


class InfGrad(torch.autograd.Function):
    """Identity forward; an Inf gradient backward from ``after`` calls on: gradients that no
    scale can make finite (the scaler skips every step)."""

    calls = 0
    after = 10**9

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        return x.clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        InfGrad.calls += 1
        return grad * torch.inf if InfGrad.calls > InfGrad.after else grad


class Net(nn.Module):
    def __init__(self, poison: str = "") -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 1))
        self.poison = poison

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        if self.poison == "grad":
            out = InfGrad.apply(out)
        if self.poison == "forward" and self.training and Net.forward_bad:
            out = out * torch.nan
        return out

    forward_bad = False


def _batches(seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, 16, generator=g), torch.randn(8, 1, generator=g))
            for _ in range(STEPS)]


def _fp16_loop(model: nn.Module, scaler: torch.amp.GradScaler, mon: Monitor | None,
               bad_from: int | None = None) -> None:
    """The user's AMP loop, with trainvitals' calls where a user puts them."""
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    for step, (x, y) in enumerate(_batches()):
        Net.forward_bad = bad_from is not None and step >= bad_from
        with torch.autocast("cpu", dtype=torch.float16):
            loss = nn.functional.mse_loss(model(x).float(), y)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        norm = nn.utils.clip_grad_norm_(model.parameters(), 1e3)
        scaler.step(opt)
        scaler.update()
        opt.zero_grad()
        if mon is not None:
            mon.log_step(step, loss=loss, grad_norm=norm)


@pytest.fixture(autouse=True)
def _fresh_inf_grad() -> None:
    InfGrad.calls, InfGrad.after, Net.forward_bad = 0, 10**9, False


def test_scaler_warm_up_skips_are_data_not_incidents(
        monitors: Callable[..., Monitor], told: Callable[..., Told]) -> None:
    torch.manual_seed(0)
    mon = monitors("amp-warmup")
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**24)
    mon.watch(Net())  # a second model's watch must not matter; the real one below
    model = Net()
    mon.watch(model)
    mon.watch_scaler(scaler)
    _fp16_loop(model, scaler, mon)
    mon.close(timeout=30)
    seen = told("amp-warmup", "loss", SKIPPED, SCALE, "grad_norm")
    skipped = [s for s, v in seen.series[SKIPPED].items() if v == 1.0]
    assert skipped, "the scaler was expected to skip its first steps at init_scale 2**24"
    assert skipped[0] == 0 and len(skipped) < STEPS // 2
    assert seen.steps(SKIPPED) == list(range(STEPS)) == seen.steps(SCALE)
    scales = [seen.series[SCALE][s] for s in range(STEPS)]
    assert scales[0] < 2.0**24 and scales[-1] == scales[len(skipped)]  # halved while skipping
    assert any(not math.isfinite(v) for v in seen.series["grad_norm"].values()), (
        "skipped steps carry non-finite (scaled) gradient norms: they are recorded as they are")
    assert seen.incidents == []


def test_skipping_that_persists_is_one_amp_incident(
        monitors: Callable[..., Monitor], told: Callable[..., Told]) -> None:
    torch.manual_seed(0)
    InfGrad.after = 5  # from the 6th backward on, no scale helps
    mon = monitors("amp-stuck")
    model, scaler = Net("grad"), torch.amp.GradScaler("cpu", init_scale=2.0**8)
    mon.watch(model)
    mon.watch_scaler(scaler)
    _fp16_loop(model, scaler, mon)
    mon.close(timeout=30)
    seen = told("amp-stuck", SKIPPED)
    assert [s for s, v in seen.series[SKIPPED].items() if v == 1.0] == list(range(5, STEPS))
    (incident,) = seen.incidents
    assert incident["kind"] == "amp" and incident["severity"] == "critical"
    assert incident["onset_step"] == 5
    assert "GradScaler" in incident["headline"] and "consecutive" in incident["headline"]


def test_a_nan_made_in_the_forward_under_amp_is_still_an_incident(
        monitors: Callable[..., Monitor], told: Callable[..., Told]) -> None:
    torch.manual_seed(0)
    mon = monitors("amp-forward-nan")
    model, scaler = Net("forward"), torch.amp.GradScaler("cpu", init_scale=2.0**8)
    mon.watch(model)
    mon.watch_scaler(scaler)
    _fp16_loop(model, scaler, mon, bad_from=12)
    mon.close(timeout=30)
    seen = told("amp-forward-nan")
    first = seen.incidents[0]
    assert first["kind"].startswith("nonfinite") and first["severity"] == "critical"
    assert first["onset_step"] == 12 and "model (Net) first made NaN" in first["headline"]


def test_attach_with_a_scaler_counts_skipped_steps_as_steps(
        monitors: Callable[..., Monitor], told: Callable[..., Told]) -> None:
    torch.manual_seed(0)
    mon = monitors("amp-attach")
    model, scaler = Net(), torch.amp.GradScaler("cpu", init_scale=2.0**24)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-2)
    handle = attach(model, optimizer, monitor=mon, scaler=scaler)  # the loop is unchanged
    for x, y in _batches():
        with torch.autocast("cpu", dtype=torch.float16):
            loss = nn.functional.mse_loss(model(x).float(), y)
        handle.loss(loss)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad()
    handle.close()
    seen = told("amp-attach", "loss", SKIPPED, SCALE)
    assert seen.steps("loss") == list(range(STEPS))  # one record per loop iteration
    assert seen.series[SKIPPED][0] == 1.0 and 0.0 in seen.series[SKIPPED].values()
    assert seen.incidents == []


def test_bf16_autocast_needs_no_scaler_and_gets_float32_headroom(
        monitors: Callable[..., Monitor], told: Callable[..., Told]) -> None:
    """bfloat16 has float32's exponent range: exp overflows only above ~88.7, as in float32,
    so a pre-activation at 40 has plenty of headroom in bf16 (it would have none in float16)."""
    mon = monitors("bf16")
    for step in range(5):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            raw = nn.functional.linear(torch.full((4, 8), 5.0), torch.ones(1, 8))  # 40
        assert raw.dtype == torch.bfloat16
        mon.tensor("depth_raw", raw, feeds_exp=True)
        mon.log_step(step, loss=1.0)
    mon.close(timeout=30)
    seen = told("bf16", "tensor/depth_raw/headroom", "tensor/depth_raw/max")
    headroom = seen.series["tensor/depth_raw/headroom"]
    assert seen.series["tensor/depth_raw/max"][0] == 40.0
    assert 48.5 < headroom[0] < 48.9  # ln(float32 max) 88.72 - 40; float16's would be < 0
    assert seen.incidents == []
