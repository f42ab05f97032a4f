"""HF Transformers: ``attach_trainer`` / ``TransformersCallback`` in ``Trainer.train()`` with a
tiny GPT-2 built from a config on the CPU (no downloads), in the Trainer's own loop.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

transformers = pytest.importorskip("transformers")

from trainvitals.server import ServerThread  # noqa: E402
from trainvitals.trainer_plugin.adapters import (  # noqa: E402
    TransformersCallback,
    attach_trainer,
)

pytestmark = pytest.mark.slow  # importing transformers and building a Trainer take seconds


class Tokens(Dataset[dict[str, torch.Tensor]]):
    """16 random token sequences that are their own labels."""

    def __init__(self) -> None:
        gen = torch.Generator().manual_seed(0)
        self.ids = torch.randint(0, 100, (16, 8), generator=gen)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


class TokenLoss(nn.Module):
    """Cross-entropy over tokens, ×1000 from training call 4 on (the planted fault)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                           labels.reshape(-1))
        if torch.is_grad_enabled():
            self.calls += 1
            if self.calls > 4:
                return loss * 1000.0
        return loss


def _trainer(tmp_path: Any, **options: Any) -> Any:
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=100,
                                     n_positions=16)
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "out"), max_steps=8, per_device_train_batch_size=2,
        learning_rate=1e-3, max_grad_norm=1.0, logging_steps=1, report_to=[], use_cpu=True,
        save_strategy="no", disable_tqdm=True, seed=0)
    return transformers.Trainer(model=transformers.GPT2LMHeadModel(config), args=args,
                                train_dataset=Tokens(), **options)


@pytest.mark.parametrize("guarded", [True, False])
def test_trainer_delivers_steps_raw_vs_used_loss_and_clips(
        guarded: bool, stall_server: ServerThread, token: str, told: Callable[..., Any],
        assert_clip_story: Callable[..., None], tmp_path: Any) -> None:
    run = f"hf-{'guard' if guarded else 'zero-edit'}"
    criterion = TokenLoss()
    vitals: TransformersCallback | None = None

    def compute_loss(outputs: Any, labels: torch.Tensor, num_items_in_batch: Any = None) -> Any:
        raw = criterion(outputs.logits, labels)
        if guarded:
            assert vitals is not None
            return vitals.clip_guard(raw, 10.0)  # the one edited line
        return raw * 0.0 if raw > 10.0 else raw

    trainer = _trainer(tmp_path, compute_loss_func=compute_loss)
    vitals = attach_trainer(trainer, run=run, loss_module=criterion,
                            server=stall_server.ws_url, token=token, spool=tmp_path / "spool")
    trainer.train()

    t = told(stall_server, run, "loss", "loss_used", "grad_norm", "grad_norm_post", "lr",
             "scalar/hf/loss", "scalar/hf/grad_norm")
    assert_clip_story(t, guarded=guarded)
    # The Trainer's own log next to ours: its grad_norm is the same pre-clip norm; its "loss"
    # is the loss used, so it shows 0 where the raw loss was above 1,000.
    assert t.series["scalar/hf/grad_norm"] == pytest.approx(t.series["grad_norm"], rel=1e-5)
    assert t.series["scalar/hf/loss"] == pytest.approx(t.series["loss_used"], abs=1e-4)
    for step in range(4):
        assert t.series["grad_norm_post"][step] == pytest.approx(
            min(t.series["grad_norm"][step], 1.0), rel=1e-4)
    assert "backward" not in trainer.accelerator.__dict__  # unwrapped at the end


def test_the_callback_alone_reads_the_model_s_own_loss(
        server: ServerThread, token: str, told: Callable[..., Any], tmp_path: Any) -> None:
    """``callbacks=[TransformersCallback(...)]``: the raw loss from the model output, the
    pre-clip norm from gradient hooks (equal to what the Trainer logs)."""
    vitals = TransformersCallback(run="hf-callback", server=server.ws_url, token=token,
                                  spool=tmp_path / "spool")
    trainer = _trainer(tmp_path, callbacks=[vitals])
    trainer.train()

    t = told(server, "hf-callback", "loss", "loss_used", "grad_norm", "scalar/hf/loss",
             "scalar/hf/grad_norm")
    assert sorted(t.series["loss"]) == list(range(8))
    assert t.series["scalar/hf/loss"] == pytest.approx(t.series["loss"], rel=1e-4)
    assert t.series["scalar/hf/grad_norm"] == pytest.approx(t.series["grad_norm"], rel=1e-4)
    assert "loss_used" not in t.series  # unknown without the accelerator: not invented
    assert t.run["config"]["max_steps"] == 8 and t.run["status"] == "finished"
