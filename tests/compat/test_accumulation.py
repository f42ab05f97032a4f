"""Gradient accumulation: several micro-batches per optimizer step, one record per step.

A NaN in micro-batch 3 of 4 must not be hidden by a clean micro-batch 4 (the statistics of a
tensor logged several times in a step are merged), and the incident says which micro-batch.
Against a real server, with real backward passes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from trainvitals import Monitor, attach
from trainvitals.protocol.series import FIRST_BAD_MICRO_BATCH, MICRO_BATCHES, scalar_series

from .conftest import TOKEN, Told

STEPS, MICRO, BAD_STEP, BAD_MICRO = 10, 4, 6, 2  # NaN in micro-batch index 2 (the 3rd)
FIRST_BAD, BATCHES = scalar_series(FIRST_BAD_MICRO_BATCH), scalar_series(MICRO_BATCHES)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(8, 16)
        self.head = nn.Linear(16, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.body(x)))


def _micro_batches() -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
    """STEPS optimizer steps of MICRO micro-batches; one input of the planted one is NaN."""
    g = torch.Generator().manual_seed(0)
    steps = [[(torch.randn(4, 8, generator=g), torch.randn(4, 1, generator=g))
              for _ in range(MICRO)] for _ in range(STEPS)]
    steps[BAD_STEP][BAD_MICRO][0][1, 3] = math.nan
    return steps


def test_monitor_merges_micro_batches_and_names_the_bad_one(
        monitors: Callable[..., Monitor], told: Callable[..., Told]) -> None:
    torch.manual_seed(0)
    model, mon = Net(), monitors("accumulate-plain")
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    for step, micro in enumerate(_micro_batches()):
        for x, y in micro:
            out = model(x)
            mon.tensor("out", out)
            loss = mon.clip_guard(nn.functional.mse_loss(out, y), threshold=1e6)
            (loss / MICRO).backward()
        opt.step()
        opt.zero_grad()
        mon.log_step(step)
    mon.close(timeout=30)
    seen = told("accumulate-plain", "tensor/out/nan", "tensor/out/max", FIRST_BAD,
                BATCHES, "loss")
    assert seen.steps("tensor/out/nan") == list(range(STEPS))  # one record per step
    assert seen.series[BATCHES] == {s: float(MICRO) for s in range(STEPS)}
    assert seen.series[FIRST_BAD][BAD_STEP] == BAD_MICRO
    assert all(seen.series[FIRST_BAD][s] == -1 for s in range(BAD_STEP))
    # the NaN output of micro-batch 3 survives the clean micro-batch 4
    assert seen.series["tensor/out/nan"][BAD_STEP] == 1.0
    assert seen.series["tensor/out/nan"][BAD_STEP - 1] == 0.0
    incident = seen.incidents[0]
    assert incident["onset_step"] == BAD_STEP
    assert f"(in micro-batch {BAD_MICRO + 1} of {MICRO})" in incident["headline"], (
        incident["headline"])


def test_attach_records_one_step_per_optimizer_step_and_the_bad_micro_batch(
        monitors: Callable[..., Monitor], told: Callable[..., Told]) -> None:
    torch.manual_seed(0)
    model, criterion = Net(), nn.MSELoss()
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    handle = attach(model, opt, monitor=monitors("accumulate-attach"), loss_module=criterion)
    for micro in _micro_batches():  # the user's loop, unchanged
        for x, y in micro:
            (criterion(model(x), y) / MICRO).backward()
        opt.step()
        opt.zero_grad()
    handle.close()
    seen = told("accumulate-attach", "loss", FIRST_BAD, BATCHES)
    assert seen.steps("loss") == list(range(STEPS))
    assert seen.series[FIRST_BAD][BAD_STEP] == BAD_MICRO
    assert seen.series[BATCHES][0] == MICRO
    incident = seen.incidents[0]
    assert incident["onset_step"] == BAD_STEP
    assert f"(in micro-batch {BAD_MICRO + 1} of {MICRO})" in incident["headline"], (
        incident["headline"])


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::UserWarning")  # Lightning's advice for tiny CPU jobs
@pytest.mark.filterwarnings("ignore:.*LeafSpec.*:FutureWarning")  # Lightning 2.6 on torch 2.13
def test_lightning_accumulation_is_one_step_per_optimizer_step_with_the_bad_micro_batch(
        server: Any, told: Callable[..., Told]) -> None:
    pl = pytest.importorskip("lightning.pytorch")
    from trainvitals.trainer_plugin.adapters import LightningCallback

    class Regressor(pl.LightningModule):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.net, self.criterion = Net(), nn.MSELoss()

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            return self.criterion(self.net(x), y)

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=1e-2)

    torch.manual_seed(0)
    micro = [b for step in _micro_batches() for b in step]  # the same batches, in order
    xs, ys = torch.cat([x for x, _ in micro]), torch.cat([y for _, y in micro])
    loader = DataLoader(TensorDataset(xs, ys), batch_size=4)  # one micro-batch per batch
    vitals = LightningCallback(run="accumulate-lightning", server=server.ws_url, token=TOKEN,
                               loss_module="criterion")
    trainer = pl.Trainer(max_steps=STEPS, accumulate_grad_batches=MICRO, accelerator="cpu",
                         devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[vitals])
    trainer.fit(Regressor(), loader)
    seen = told("accumulate-lightning", "loss", FIRST_BAD, BATCHES)
    assert seen.steps("loss") == list(range(STEPS))  # optimizer steps, not batches
    assert seen.series[FIRST_BAD][BAD_STEP] == BAD_MICRO
    incident = seen.incidents[0]
    assert incident["onset_step"] == BAD_STEP
    assert f"(in micro-batch {BAD_MICRO + 1} of {MICRO})" in incident["headline"], (
        incident["headline"])


def test_a_loss_seen_by_the_loss_hook_and_clip_guard_is_one_micro_batch_and_validation_is_not(
        monitors: Callable[..., Monitor], told: Callable[..., Told]) -> None:
    """attach's loss hook and ``clip_guard`` both see the same loss: one micro-batch, not two;
    and tensors logged under ``no_grad`` (validation) between steps do not join a step's
    micro-batches — the latest replaces them, as it always did."""
    torch.manual_seed(0)
    model, criterion = Net(), nn.MSELoss()
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    mon = monitors("no-accumulation")
    handle = attach(model, opt, monitor=mon, loss_module=criterion)
    for x, y in [b[0] for b in _micro_batches()][:4]:
        loss = handle.clip_guard(criterion(model(x), y), 1e6)
        loss.backward()
        opt.step()
        opt.zero_grad()
        with torch.no_grad():  # a validation pass between steps
            mon.tensor("val_out", model(x) * 0 + 7.0)
            mon.tensor("val_out", model(x) * 0 + 3.0)
    handle.close()
    seen = told("no-accumulation", "loss", BATCHES, FIRST_BAD, "tensor/val_out/max")
    assert seen.steps("loss") == [0, 1, 2, 3]
    assert BATCHES not in seen.series and FIRST_BAD not in seen.series  # one micro-batch each
    assert set(seen.series["tensor/val_out/max"].values()) == {3.0}  # the latest, not merged
