"""Mixed precision in the frameworks that own the GradScaler: Lightning ``16-mixed`` and the
HF Trainer with ``fp16=True``. A normal run raises nothing, and the scaler is watched without a
line of user code (``amp/scale`` and ``amp/skipped`` on every step). CPU float16: the CUDA
scaler is the same object type, unproven here (no GPU).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from trainvitals.protocol.series import AMP_SCALE, AMP_SKIPPED, scalar_series
from trainvitals.server import ServerThread

from .conftest import TOKEN, Told

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore:.*LeafSpec.*:FutureWarning"),
]
SKIPPED, SCALE = scalar_series(AMP_SKIPPED), scalar_series(AMP_SCALE)
STEPS = 12


def test_lightning_16_mixed_with_its_scaler_raises_nothing(
        server: ServerThread, told: Callable[..., Told]) -> None:
    pl = pytest.importorskip("lightning.pytorch")
    from lightning.pytorch.plugins.precision import MixedPrecision

    from trainvitals.trainer_plugin.adapters import LightningCallback

    class Regressor(pl.LightningModule):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 1))

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            return nn.functional.mse_loss(self.net(x).float(), y)

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=1e-2)

    torch.manual_seed(0)
    data = TensorDataset(torch.randn(2 * STEPS, 8), torch.randn(2 * STEPS, 1))
    # On the CPU Lightning's "16-mixed" has no scaler of its own: give it one, as on CUDA.
    precision = MixedPrecision("16-mixed", "cpu",
                               scaler=torch.amp.GradScaler("cpu", init_scale=2.0**24))
    vitals = LightningCallback(run="lightning-16-mixed", server=server.ws_url, token=TOKEN)
    trainer = pl.Trainer(max_steps=STEPS, accelerator="cpu", devices=1, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, plugins=[precision], callbacks=[vitals])
    trainer.fit(Regressor(), DataLoader(data, batch_size=2))
    seen = told("lightning-16-mixed", "loss_used", SKIPPED, SCALE)
    assert seen.steps(SKIPPED) == list(range(STEPS)) == seen.steps(SCALE)
    assert seen.series[SKIPPED][0] == 1.0  # 2**24 is too high for float16 gradients
    assert seen.series[SCALE][STEPS - 1] < 2.0**24
    assert seen.incidents == [], [i["headline"] for i in seen.incidents]


class Tokens(Dataset[dict[str, torch.Tensor]]):
    def __init__(self) -> None:
        self.ids = torch.randint(0, 100, (2 * STEPS, 8), generator=torch.Generator().manual_seed(0))

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def test_hf_trainer_fp16_raises_nothing(server: ServerThread, told: Callable[..., Told],
                                         tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    from trainvitals.trainer_plugin.adapters import attach_trainer

    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=100,
                                     n_positions=16)
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "out"), max_steps=STEPS, per_device_train_batch_size=2,
        learning_rate=1e-3, max_grad_norm=1.0, logging_steps=1, report_to=[], use_cpu=True,
        fp16=True, save_strategy="no", disable_tqdm=True, seed=0)
    trainer = transformers.Trainer(model=transformers.GPT2LMHeadModel(config), args=args,
                                   train_dataset=Tokens())
    # On the CPU Accelerate makes no GradScaler for fp16 (it does on CUDA): give it the one it
    # would make there, before train() prepares the optimizer with it.
    assert trainer.accelerator.scaler is None and trainer.accelerator.mixed_precision == "fp16"
    trainer.accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**24)
    trainer.accelerator.native_amp = True
    attach_trainer(trainer, run="hf-fp16", server=server.ws_url, token=TOKEN)
    trainer.train()
    seen = told("hf-fp16", "loss", SKIPPED, SCALE)
    assert seen.steps(SCALE) == list(range(STEPS)) == seen.steps(SKIPPED)
    assert seen.series[SKIPPED][0] == 1.0  # the scaler found its scale, as designed
    assert seen.incidents == [], [i["headline"] for i in seen.incidents]
