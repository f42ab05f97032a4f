"""``attach(model, optimizer)`` on vanilla loops, against a real server.

The loops below are what users already have; the only lines that mention trainvitals are the
``attach`` call, its ``close`` and — where a test says so — the one-line guard replacement.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

import trainvitals
from trainvitals.server import ServerThread


def test_a_vanilla_loop_reports_every_step_with_no_edit(
        server: ServerThread, token: str, told: Callable[..., Any],
        small_model: Callable[[], nn.Module], data: tuple[torch.Tensor, torch.Tensor],
        tmp_path: Any) -> None:
    """No loss hook, no guard: steps, pre- and post-clip norms, learning rate, updates."""
    model = small_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    x, y = data
    handle = trainvitals.attach(model, optimizer, run="vanilla", server=server.ws_url,
                                token=token, spool=tmp_path / "spool")
    norms = []
    for _ in range(5):  # the user's loop, untouched
        loss = nn.functional.mse_loss(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), 0.01)))
        optimizer.step()
    handle.close()

    t = told(server, "vanilla", "loss", "grad_norm", "grad_norm_post", "lr",
             "scalar/update/0", "scalar/trainable/2")
    assert "loss" not in t.series  # loss-free vitals: nothing invented
    assert sorted(t.series["grad_norm"]) == [0, 1, 2, 3, 4]
    for step, norm in enumerate(norms):  # pre-clip, as clip_grad_norm_ returned it
        assert t.series["grad_norm"][step] == pytest.approx(norm, rel=1e-5)
        assert norm > 0.01  # so the clip really cut it ...
        assert t.series["grad_norm_post"][step] == pytest.approx(0.01, rel=1e-3)  # ... to 0.01
    assert set(t.series["lr"].values()) == {0.05}
    assert all(v > 0 for v in t.series["scalar/update/0"].values())
    assert set(t.series["scalar/trainable/2"].values()) == {2.0}  # weight and bias
    assert t.run["status"] == "finished"


def test_the_loss_module_hook_and_the_guard_tell_the_clip_story(
        stall_server: ServerThread, token: str, told: Callable[..., Any],
        assert_clip_story: Callable[..., None], planted_loss: Callable[..., nn.Module],
        small_model: Callable[[], nn.Module], data: tuple[torch.Tensor, torch.Tensor],
        tmp_path: Any) -> None:
    model, criterion = small_model(), planted_loss()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x, y = data
    handle = trainvitals.attach(model, optimizer, run="guarded", loss_module=criterion,
                                server=stall_server.ws_url, token=token,
                                spool=tmp_path / "spool")
    for _ in range(8):
        raw = criterion(model(x), y)
        loss = handle.clip_guard(raw, 10.0)  # was: if raw > 10: loss = raw * 0.0
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()
        with torch.no_grad():  # validation: its loss must not count
            criterion(model(x), y)
    handle.close()
    assert_clip_story(told(stall_server, "guarded"))


def test_one_optional_call_after_the_step_joins_its_own_step(
        server: ServerThread, token: str, told: Callable[..., Any],
        small_model: Callable[[], nn.Module], data: tuple[torch.Tensor, torch.Tensor],
        tmp_path: Any) -> None:
    """``handle.loss`` and ``handle.log`` after ``optimizer.step()`` (where loops log) still
    belong to that step: the record is sent when the next forward begins."""
    model = small_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    x, y = data
    handle = trainvitals.attach(model, optimizer, run="late-loss", server=server.ws_url,
                                token=token, spool=tmp_path / "spool", watch=False,
                                updates=False, start_step=100)
    seen = {}
    for i in range(4):
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        seen[100 + i] = loss.item()
        handle.loss(loss)
        handle.log({"epoch": 0.25 * i, "note": "strings are left out"})
    handle.close()

    t = told(server, "late-loss", "loss", "scalar/epoch", "scalar/note")
    assert t.series["loss"] == pytest.approx(seen)
    assert t.series["scalar/epoch"] == {100: 0.0, 101: 0.25, 102: 0.5, 103: 0.75}
    assert "scalar/note" not in t.series


def test_watched_tensors_and_nan_origin_come_without_per_step_calls(
        server: ServerThread, token: str, rest: Callable[..., Any],
        told: Callable[..., Any], tmp_path: Any) -> None:
    """``watch`` is on by default: a NaN made inside one module is attributed to it."""

    class Log(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.log(x)  # of a negative: NaN from finite inputs

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), Log(), nn.Linear(4, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    handle = trainvitals.attach(model, optimizer, run="nan-origin", server=server.ws_url,
                                token=token, spool=tmp_path / "spool")
    for step in range(3):
        x = torch.ones(2, 4) * (1.0 if step < 2 else -50.0)
        with torch.no_grad():
            model[0].weight.fill_(0.1)
            model[0].bias.fill_(0.0)
        loss = model(x).pow(2).mean()
        handle.loss(loss)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    handle.close()

    t = told(server, "nan-origin", "loss")
    assert math.isfinite(t.series["loss"][1]) and t.series["loss"][2] == "NaN"
    origins = rest(server, f"/runs/{t.run['id']}/origins")["origins"]
    assert [(o["step"], o["module"], o["module_type"]) for o in origins] == [(2, "model.1", "Log")]


def test_detach_takes_every_hook_off(server: ServerThread, token: str, tmp_path: Any,
                                     small_model: Callable[[], nn.Module],
                                     data: tuple[torch.Tensor, torch.Tensor]) -> None:
    model, criterion = small_model(), nn.MSELoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    x, y = data
    handle = trainvitals.attach(model, optimizer, run="detached", loss_module=criterion,
                                server=server.ws_url, token=token, spool=tmp_path / "spool")
    hooks = (len(model._forward_pre_hooks), len(criterion._forward_hooks),
             len(optimizer._optimizer_step_post_hooks))
    assert hooks[1:] == (1, 2)  # the loss hook; ours and watch_optimizer's
    handle.detach()
    criterion(model(x), y).backward()
    optimizer.step()
    assert (len(model._forward_pre_hooks), len(criterion._forward_hooks),
            len(optimizer._optimizer_step_post_hooks)) == (0, 0, 0)
    assert handle.step == 0  # no step was recorded after detach
    handle.close()
    assert handle.monitor.stats().submitted == 2  # run start and run end only


class ExpHead(nn.Module):
    """A π³-style head: ``z_raw`` and ``depth = exp(z_raw)`` in an output dict."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(4, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        z_raw = self.lin(x)
        return {"z_raw": z_raw, "depth": torch.exp(z_raw)}


def test_named_tensors_need_no_call_and_an_aborted_step_still_reports(
        server: ServerThread, token: str, told: Callable[..., Any],
        data: tuple[torch.Tensor, torch.Tensor], tmp_path: Any) -> None:
    """``tensors=`` records statistics on every training forward; a trainer that aborts on a
    non-finite loss before ``optimizer.step()`` still gets that step recorded."""
    model, criterion = ExpHead(), nn.MSELoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = data
    handle = trainvitals.attach(model, optimizer, run="aborted", loss_module=criterion,
                                tensors={"depth_raw": "z_raw", "hidden": model.lin},
                                feeds_exp={"depth_raw"}, server=server.ws_url, token=token,
                                spool=tmp_path / "spool")
    with pytest.raises(FloatingPointError), handle:
        for step in range(6):
            if step == 3:
                with torch.no_grad():
                    model.lin.bias.fill_(100.0)  # one bad update: exp overflows
            loss = criterion(model(x)["depth"], y)
            if not torch.isfinite(loss):  # the trainer's own abort
                raise FloatingPointError(f"loss is {loss.item()} at step {step}")
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()

    t = told(server, "aborted", "loss", "grad_norm", "tensor/depth_raw/headroom",
             "tensor/hidden/max", "tensor/depth_raw/max")
    assert sorted(t.series["loss"]) == [0, 1, 2, 3]
    assert t.series["loss"][3] == "Infinity"
    assert sorted(t.series["grad_norm"]) == [0, 1, 2]  # no backward at the aborted step
    headroom = t.series["tensor/depth_raw/headroom"]
    assert all(80 < headroom[s] < 89 for s in range(3))
    assert headroom[3] == pytest.approx(88.72 - t.series["tensor/depth_raw/max"][3], abs=0.01)
    assert headroom[3] < 0
    assert t.series["tensor/hidden/max"] == t.series["tensor/depth_raw/max"]  # same tensor
    assert t.run["status"] == "crashed"
