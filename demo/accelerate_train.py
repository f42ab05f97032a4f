"""The demo trainer on HF Accelerate, watched through the zero-edit path.

The same π³ trainer as ``trainvitals.demo.train`` — ×0 clip at ``clip_loss``, abort on a
non-finite loss, ``clip_grad_norm_(…, 1.0)``, AdamW, the same deterministic spike — written
the way an Accelerate user writes it: ``Accelerator(cpu=True)``, ``prepare``,
``accelerator.backward``, ``accelerator.clip_grad_norm_``. trainvitals comes in through one
``attach`` call before the loop, which finds the raw loss (a hook on the loss module), the loss
used (the accelerator's ``backward``), the pre-clip norm (its ``clip_grad_norm_``), the step
boundaries (the optimizer), ``depth_raw``/``depth``/``local_points`` (the model's output) and
where NaN/Inf start. The loop body mentions trainvitals in one line: the guard, which replaces
``if loss > clip_loss: loss = loss * 0.0`` to add clip events (without a monitor the original
``if`` runs).
"""

from __future__ import annotations

from typing import Any

import torch
from accelerate import Accelerator  # type: ignore[import-untyped]
from torch import nn

from trainvitals.demo.loss import pi3_loss
from trainvitals.demo.model import PointMapNet, uses_exp
from trainvitals.demo.scenes import SceneBatch
from trainvitals.demo.train import (
    DemoConfig,
    DemoResult,
    NonFiniteLossError,
    Progress,
    _batch_for,
    _batch_pool,
    _spike,
)
from trainvitals.trainer_plugin.adapters.plain import Attachment, attach
from trainvitals.trainer_plugin.monitor import Monitor

__all__ = ["Pi3Criterion", "train_accelerate"]


class Pi3Criterion(nn.Module):
    """The π³-like loss as a module: ``{"loss": total, <component>: value, ...}``."""

    def forward(self, pred_points: torch.Tensor, gt_points: torch.Tensor,
                valid: torch.Tensor) -> dict[str, torch.Tensor]:
        out = pi3_loss(pred_points, gt_points, valid)
        return {"loss": out.total, **out.components}


def _attach(monitor: Monitor, model: nn.Module, optimizer: Any, criterion: nn.Module,
            accelerator: Accelerator, config: DemoConfig) -> Attachment:
    exp = uses_exp(config.depth_activation)
    return attach(model, optimizer, monitor=monitor, loss_module=criterion,
                  accelerator=accelerator, feeds_exp={"depth_raw"} if exp else (),
                  tensors={"depth_raw": "z_raw", "depth": "depth",
                           "local_points": "local_points"})


def _run(config: DemoConfig, monitor: Monitor | None, progress: Progress | None,
         history: list[dict[str, float]]) -> int:
    """The trainer's setup and one ``attach``; the last step goes out even on an abort."""
    torch.manual_seed(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    accelerator = Accelerator(cpu=True)
    model = PointMapNet(config.depth_activation)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr,
                                  weight_decay=config.weight_decay)
    model, optimizer = accelerator.prepare(model, optimizer)
    criterion = Pi3Criterion()
    if monitor is None:
        return _loop(config, accelerator, model, optimizer, criterion, None, progress,
                     history, _batch_pool(config, gen))
    handle = _attach(monitor, model, optimizer, criterion, accelerator, config)
    try:
        return _loop(config, accelerator, model, optimizer, criterion, handle, progress,
                     history, _batch_pool(config, gen))
    finally:
        handle.detach()  # the monitor stays open: the caller ends the run


def _loop(config: DemoConfig, accelerator: Accelerator, model: nn.Module, optimizer: Any,
          criterion: nn.Module, handle: Attachment | None, progress: Progress | None,
          history: list[dict[str, float]], pool: list[SceneBatch]) -> int:
    """The training loop, as the trainer has it; only the guard line knows trainvitals."""
    for step in range(config.steps):
        batch = _batch_for(step, config, pool)
        out = model(batch.image)
        parts = criterion(out["local_points"], batch.points, batch.valid)
        raw = parts.pop("loss")
        if handle is not None:
            loss = handle.clip_guard(raw, config.clip_loss, parts)  # the edited line
        else:
            loss = raw * 0.0 if raw > config.clip_loss else raw
        finite = bool(torch.isfinite(loss))  # the original abort check
        grad_norm = torch.tensor(float("nan"))
        if finite:
            optimizer.zero_grad()
            accelerator.backward(loss)
            grad_norm = accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
            optimizer.step()
        if config.record_history or progress is not None:
            rec = _record(step, raw, loss, grad_norm, out["z_raw"], parts, config)
            if config.record_history:
                history.append(rec)
            if progress is not None:
                progress(step, rec)
        if not finite:
            raise NonFiniteLossError(step, raw.item(), loss.item())
        if step == config.spike_step:
            _spike(accelerator.unwrap_model(model), config.shift())
    return config.steps


def _record(step: int, raw: torch.Tensor, used: torch.Tensor, grad_norm: torch.Tensor,
            z_raw: torch.Tensor, parts: dict[str, torch.Tensor],
            config: DemoConfig) -> dict[str, float]:
    """The same per-step floats as ``train`` keeps (host syncs, free on this CPU demo)."""
    rec = {"step": float(step), "loss_raw": raw.item(), "loss_used": used.item(),
           "grad_norm_pre": float(grad_norm), "lr": config.lr,
           "z_raw_max": z_raw.max().item(), "z_raw_mean": z_raw.mean().item()}
    rec["clipped"] = float(rec["loss_raw"] > config.clip_loss and rec["loss_used"] == 0.0)
    rec.update({f"loss/{k}": v.item() for k, v in parts.items()})
    return rec


def train_accelerate(config: DemoConfig, monitor: Monitor | None = None,
                     progress: Progress | None = None) -> DemoResult:
    """Like ``train``: a non-finite loss ends the run as ``status="crashed"``."""
    history: list[dict[str, float]] = []
    try:
        steps = _run(config, monitor, progress, history)
    except NonFiniteLossError as err:
        return DemoResult("crashed", err.step + 1, str(err), history)
    return DemoResult("finished", steps, "", history)
