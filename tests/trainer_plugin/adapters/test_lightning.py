"""PyTorch Lightning: ``LightningCallback`` in ``Trainer(callbacks=[...]).fit`` (CPU), with
Lightning's own loop, gradient clipping and optimizer closure.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

pl = pytest.importorskip("lightning.pytorch")

from trainvitals.server import ServerThread  # noqa: E402
from trainvitals.trainer_plugin.adapters import LightningCallback  # noqa: E402

pytestmark = [
    pytest.mark.slow,  # Lightning's import and Trainer set-up take seconds on a small CPU
    # Lightning's advice for a tiny CPU job (workers, log intervals) is not what is tested
    pytest.mark.filterwarnings("ignore::lightning.fabric.utilities.warnings.PossibleUserWarning"),
    # Lightning 2.6 on torch 2.13: its pytree helper uses a LeafSpec API torch deprecated
    pytest.mark.filterwarnings("ignore:.*LeafSpec.*:FutureWarning"),
]


class Regressor(pl.LightningModule):
    """The user's module; ``guard`` is the one edited line (None: the trainer's own ``if``)."""

    def __init__(self, net: nn.Module, criterion: nn.Module,
                 guard: Callable[..., torch.Tensor] | None = None) -> None:
        super().__init__()
        self.net, self.criterion, self.guard = net, criterion, guard

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        raw = self.criterion(self.net(x), y)
        if self.guard is None:
            return raw * 0.0 if raw > 10.0 else raw
        return self.guard(raw, 10.0)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=1e-3)


def _fit(module: pl.LightningModule, callback: LightningCallback,
         data: tuple[torch.Tensor, torch.Tensor], **options: Any) -> None:
    loader = DataLoader(TensorDataset(*data), batch_size=2)
    trainer = pl.Trainer(max_steps=8, accelerator="cpu", devices=1, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, gradient_clip_val=1.0,
                         callbacks=[callback], **options)
    trainer.fit(module, loader)


@pytest.mark.parametrize("guarded", [True, False])
def test_lightning_fit_delivers_steps_raw_vs_used_loss_and_clips(
        guarded: bool, stall_server: ServerThread, token: str, told: Callable[..., Any],
        assert_clip_story: Callable[..., None], planted_loss: Callable[..., nn.Module],
        small_model: Callable[[], nn.Module], data: tuple[torch.Tensor, torch.Tensor],
        tmp_path: Any) -> None:
    run = f"lightning-{'guard' if guarded else 'zero-edit'}"
    vitals = LightningCallback(run=run, loss_module="criterion", server=stall_server.ws_url,
                               token=token, spool=tmp_path / "spool")
    module = Regressor(small_model(), planted_loss(), vitals.clip_guard if guarded else None)
    _fit(module, vitals, data)

    t = told(stall_server, run)
    assert_clip_story(t, guarded=guarded)
    for step in range(4):  # pre-clip above 1.0 is cut by Lightning's gradient_clip_val
        assert t.series["grad_norm_post"][step] == pytest.approx(
            min(t.series["grad_norm"][step], 1.0), rel=1e-4)
    assert set(t.series["lr"].values()) == {1e-3}


def test_accumulated_batches_make_one_step_each(
        server: ServerThread, token: str, told: Callable[..., Any],
        small_model: Callable[[], nn.Module], data: tuple[torch.Tensor, torch.Tensor],
        tmp_path: Any) -> None:
    vitals = LightningCallback(run="lightning-accumulate", loss_module="criterion",
                               server=server.ws_url, token=token, spool=tmp_path / "spool",
                               watch=False, updates=False)
    _fit(Regressor(small_model(), nn.MSELoss()), vitals, data, accumulate_grad_batches=2)
    t = told(server, "lightning-accumulate", "loss", "loss_used")
    assert sorted(t.series["loss"]) == list(range(8))  # max_steps counts optimizer steps
    for step, raw in t.series["loss"].items():  # Lightning backpropagates loss / 2
        assert t.series["loss_used"][step] == pytest.approx(raw / 2, rel=1e-5)
