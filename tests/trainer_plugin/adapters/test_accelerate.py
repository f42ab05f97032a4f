"""HF Accelerate: ``attach(..., accelerator=...)`` after ``prepare`` and ``TrainvitalsTracker``
in ``log_with``, with the real ``Accelerator`` (CPU) driving a loop that is not edited.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

accelerate = pytest.importorskip("accelerate")

import trainvitals  # noqa: E402
from trainvitals.server import ServerThread  # noqa: E402
from trainvitals.trainer_plugin.adapters import TrainvitalsTracker  # noqa: E402


def _prepared(small_model: Callable[[], nn.Module], tracker: TrainvitalsTracker) -> Any:
    accelerator = accelerate.Accelerator(cpu=True, log_with=[tracker])
    accelerator.init_trackers("adapters", config={"lr": 1e-3, "clip_loss": 10.0})
    model = small_model()
    model, optimizer = accelerator.prepare(model, torch.optim.AdamW(model.parameters(), 1e-3))
    return accelerator, model, optimizer


def test_zero_edit_loop_shows_raw_vs_used_loss_and_the_tracker_logs(
        stall_server: ServerThread, token: str, told: Callable[..., Any],
        assert_clip_story: Callable[..., None], planted_loss: Callable[..., nn.Module],
        small_model: Callable[[], nn.Module], data: tuple[torch.Tensor, torch.Tensor],
        tmp_path: Any) -> None:
    tracker = TrainvitalsTracker(run="accel-zero-edit", server=stall_server.ws_url,
                                 token=token, spool=tmp_path / "spool")
    accelerator, model, optimizer = _prepared(small_model, tracker)
    criterion = planted_loss()
    trainvitals.attach(model, optimizer, loss_module=criterion, accelerator=accelerator)
    x, y = data
    raws, pre_clip = {}, {}
    for step in range(8):  # the trainer's loop, bad guard included, not edited
        raw = criterion(model(x), y)
        loss = raw * 0.0 if raw > 10.0 else raw
        accelerator.backward(loss)
        pre_clip[step] = float(accelerator.clip_grad_norm_(model.parameters(), 1.0))
        optimizer.step()
        optimizer.zero_grad()
        raws[step] = raw.item()
        accelerator.log({"train/raw": raws[step], "phase": "train"}, step=step)
        tracker.log_images({"depth": torch.full((1, 4, 4), float(step)), "png": b"\x89PNG"})
    accelerator.end_training()

    t = told(stall_server, "accel-zero-edit", "loss", "loss_used", "grad_norm",
             "scalar/train/raw", "tensor/image/depth/max")
    assert_clip_story(t, guarded=False)
    assert t.series["grad_norm"] == pytest.approx(pre_clip)  # what clip_grad_norm_ returned
    assert t.series["scalar/train/raw"] == pytest.approx(raws)  # on the step it was logged
    assert t.series["tensor/image/depth/max"] == {s: float(s) for s in range(8)}
    assert t.run["config"] == {"lr": 1e-3, "clip_loss": 10.0}
    assert "backward" not in accelerator.__dict__  # end_training unwrapped the instance


def test_the_guard_adds_clip_events_under_accelerate(
        stall_server: ServerThread, token: str, told: Callable[..., Any],
        assert_clip_story: Callable[..., None], planted_loss: Callable[..., nn.Module],
        small_model: Callable[[], nn.Module], data: tuple[torch.Tensor, torch.Tensor],
        tmp_path: Any) -> None:
    tracker = TrainvitalsTracker(run="accel-guard", server=stall_server.ws_url, token=token,
                                 spool=tmp_path / "spool")
    accelerator, model, optimizer = _prepared(small_model, tracker)
    criterion = planted_loss()
    handle = trainvitals.attach(model, optimizer, loss_module=criterion,
                                accelerator=accelerator)
    x, y = data
    for _ in range(8):
        raw = criterion(model(x), y)
        loss = handle.clip_guard(raw, 10.0)  # the one edited line
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()
    accelerator.end_training()
    assert_clip_story(told(stall_server, "accel-guard"))


def test_gradient_accumulation_makes_one_step_per_optimizer_step(
        server: ServerThread, token: str, told: Callable[..., Any],
        small_model: Callable[[], nn.Module], data: tuple[torch.Tensor, torch.Tensor],
        monitors: Callable[..., Any]) -> None:
    """Micro-batches are averaged into their step; the loss used is what ``backward`` got."""
    monitor = monitors("accel-accumulate", server.ws_url)
    accelerator = accelerate.Accelerator(cpu=True, gradient_accumulation_steps=2)
    model = small_model()
    model, optimizer = accelerator.prepare(model, torch.optim.SGD(model.parameters(), 0.01))
    criterion = nn.MSELoss()
    handle = trainvitals.attach(model, optimizer, monitor=monitor, loss_module=criterion,
                                accelerator=accelerator)
    x, y = data
    seen: list[float] = []
    for micro in range(6):
        with accelerator.accumulate(model):
            loss = criterion(model(x[micro:micro + 4]), y[micro:micro + 4])
            seen.append(loss.item())
            accelerator.backward(loss)
            optimizer.step()
            optimizer.zero_grad()
    handle.close()

    t = told(server, "accel-accumulate", "loss", "loss_used")
    means = {i: (seen[2 * i] + seen[2 * i + 1]) / 2 for i in range(3)}
    assert t.series["loss"] == pytest.approx(means)
    assert t.series["loss_used"] == pytest.approx(means)


def test_the_tracker_alone_sends_each_log_call_as_a_step(
        server: ServerThread, token: str, told: Callable[..., Any], tmp_path: Any) -> None:
    """Without ``attach`` the tracker is an ordinary ``log_with`` tracker: every rank logs
    (``main_process_only`` is off), each ``log`` call is one step."""
    tracker = TrainvitalsTracker(run="tracker-alone", server=server.ws_url, token=token,
                                 spool=tmp_path / "spool")
    assert tracker.main_process_only is False
    accelerator = accelerate.Accelerator(cpu=True, log_with=[tracker])
    accelerator.init_trackers("adapters", config={"epochs": 2, "model": "mlp", "obj": object()})
    assert accelerator.get_tracker("trainvitals") is tracker
    for step in (0, 10, 20):
        accelerator.log({"val/loss": 1.0 / (step + 1), "val/acc": torch.tensor(0.5)}, step=step)
    tracker.log_images({"pred": torch.zeros(2, 2)}, step=20)  # joins the next step
    accelerator.log({"val/loss": 0.01})  # no step: the next number
    accelerator.end_training()

    t = told(server, "tracker-alone", "scalar/val/loss", "scalar/val/acc",
             "tensor/image/pred/count")
    assert t.series["scalar/val/loss"] == pytest.approx({0: 1.0, 10: 1 / 11, 20: 1 / 21, 21: 0.01})
    assert t.series["scalar/val/acc"] == {0: 0.5, 10: 0.5, 20: 0.5}
    assert t.series["tensor/image/pred/count"] == {21: 4.0}
    assert t.run["config"] == {"epochs": 2, "model": "mlp"}
    assert t.run["status"] == "finished"
