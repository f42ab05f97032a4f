"""Updates, dead and frozen parameters, learning rates, overflow headroom and normalisation,
from real training steps to the server's series and alerts."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

from trainvitals import Monitor
from trainvitals.server import ServerThread

Rest = Callable[..., Any]
MakeMonitor = Callable[..., Monitor]


def run_id(rest: Rest, srv: ServerThread, name: str) -> int:
    (row,) = [r for r in rest(srv, "/runs")["runs"] if r["name"] == name]
    return int(row["id"])


def series(rest: Rest, srv: ServerThread, run: str, name: str) -> list[Any]:
    found = rest(srv, f"/runs/{run_id(rest, srv, run)}/series", name=name)["series"]
    return [] if not found else list(found[0]["values"])


def alerts(rest: Rest, srv: ServerThread, run: str, rule: str) -> list[dict[str, Any]]:
    return [a for a in rest(srv, "/alerts", run=run)["alerts"] if a["rule"] == rule]


class Parts(nn.Module):
    """One module that learns, one frozen, one whose gradient is exactly 0, one never used."""

    def __init__(self) -> None:
        super().__init__()
        self.live = nn.Linear(4, 4)
        self.frozen = nn.Linear(4, 4).requires_grad_(False)
        self.dead = nn.Linear(4, 4)
        self.unused = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.live(self.frozen(x)) + self.dead(x) * 0.0
        return out


def relative_update(before: list[torch.Tensor], after: list[torch.Tensor]) -> float:
    moved = math.sqrt(sum(float((a - b).pow(2).sum()) for a, b in zip(after, before, strict=True)))
    size = math.sqrt(sum(float(a.pow(2).sum()) for a in after))
    return moved / size


def test_updates_tell_frozen_from_dead_and_report_learning_rates(
        server: ServerThread, monitors: MakeMonitor, rest: Rest) -> None:
    torch.manual_seed(0)
    net = Parts()
    opt = torch.optim.SGD([{"params": net.live.parameters(), "lr": 0.1},
                           {"params": [*net.dead.parameters(), *net.unused.parameters()],
                            "lr": 0.01}])
    mon = monitors("updates", server.ws_url)
    mon.watch_optimizer(opt, net)
    expected = []
    for step in range(3):
        before = [p.detach().clone() for p in net.live.parameters()]
        torch.autograd.backward(net(torch.randn(8, 4)).pow(2).mean())
        opt.step()
        opt.zero_grad()
        expected.append(relative_update(before, [p.detach() for p in net.live.parameters()]))
        mon.log_step(step)
    mon.close()

    assert series(rest, server, "updates", "scalar/update/live") == pytest.approx(expected)
    assert min(expected) > 0
    assert series(rest, server, "updates", "scalar/update/dead") == [0.0] * 3
    assert series(rest, server, "updates", "scalar/update/unused") == [0.0] * 3
    assert series(rest, server, "updates", "scalar/update/frozen") == []  # nothing to move
    for module, dead, trainable, frozen in (("live", 0, 2, 0), ("frozen", 0, 0, 2),
                                            ("dead", 2, 2, 0), ("unused", 2, 2, 0)):
        assert series(rest, server, "updates", f"scalar/dead_grads/{module}") == [dead] * 3
        assert series(rest, server, "updates", f"scalar/trainable/{module}") == [trainable] * 3
        assert series(rest, server, "updates", f"scalar/frozen/{module}") == [frozen] * 3
    assert series(rest, server, "updates", "scalar/lr/group0") == [0.1] * 3
    assert series(rest, server, "updates", "scalar/lr/group1") == [0.01] * 3
    assert alerts(rest, server, "updates", "no_learning") == []  # `live` learns


class Gated(nn.Module):
    """``dead`` contributes only while ``gate`` is 1: its gradient is exactly 0 once gated off."""

    def __init__(self) -> None:
        super().__init__()
        self.live, self.dead = nn.Linear(4, 4), nn.Linear(4, 4)
        self.gate = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.live(x) + self.dead(x) * self.gate
        return out


def test_dead_gradients_count_the_step_they_belong_to_under_a_closure(
        server: ServerThread, monitors: MakeMonitor, rest: Rest) -> None:
    # Lightning runs forward and backward inside optimizer.step(closure): the step's gradients
    # only exist after the step began, so counting them before it would lag by one step.
    torch.manual_seed(0)
    net = Gated()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    mon = monitors("closure-dead", server.ws_url)
    mon.watch_optimizer(opt, net)
    for step in range(4):
        net.gate = 0.0 if step >= 2 else 1.0

        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = net(torch.randn(8, 4)).pow(2).mean()
            loss.backward()
            return loss

        opt.step(closure)
        mon.log_step(step)
    mon.close()

    assert series(rest, server, "closure-dead", "scalar/dead_grads/dead") == [0, 0, 2, 2]
    assert series(rest, server, "closure-dead", "scalar/dead_grads/live") == [0, 0, 0, 0]


def train_zeroed(mon: Monitor, net: nn.Module, opt: torch.optim.Optimizer, steps: int,
                 zero: bool) -> None:
    """AdamW with weight decay; the trainer's guard zeroes every loss when ``zero``."""
    for step in range(steps):
        raw = net(torch.randn(8, 4)).pow(2).mean() + 20.0
        used = mon.clip_guard(raw, threshold=10.0) if zero else raw
        torch.autograd.backward(used)
        opt.step()
        opt.zero_grad()
        mon.log_step(step)


@pytest.mark.parametrize("zero", [True, False])
def test_no_learning_fires_when_every_gradient_is_zero_although_weight_decay_moves_weights(
        start_server: Callable[..., ServerThread], monitors: MakeMonitor, rest: Rest,
        zero: bool) -> None:
    srv = start_server(stall_steps=3)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 1))
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=0.1)
    mon = monitors("zeroed" if zero else "learning", srv.ws_url)
    mon.watch_optimizer(opt, net)
    train_zeroed(mon, net, opt, 5, zero)
    mon.close()
    run = "zeroed" if zero else "learning"
    updates = series(rest, srv, run, "scalar/update/0")
    assert len(updates) == 5 and min(updates) > 1e-6  # weight decay alone still moves them
    found = alerts(rest, srv, run, "no_learning")
    if not zero:
        assert found == []
        return
    (alert,) = found
    assert (alert["severity"], alert["series"], alert["first_step"], alert["opened_step"]) == (
        "critical", "update", 0, 2)
    assert alert["message"].startswith(
        "No learning: for 5 consecutive steps since step 0, every trainable parameter's "
        "gradient was exactly 0 or missing (4 tensors in 2 modules); only weight decay can "
        "move the weights (largest update ")


def test_no_learning_fires_when_no_module_moves(
        start_server: Callable[..., ServerThread], monitors: MakeMonitor, rest: Rest) -> None:
    srv = start_server(stall_steps=3)
    net = nn.Linear(4, 1)
    opt = torch.optim.SGD(net.parameters(), lr=0.0)  # a scheduler that decayed to nothing
    mon = monitors("lr-zero", srv.ws_url)
    mon.watch_optimizer(opt)  # without the model: one "module" per parameter group
    for step in range(4):
        torch.autograd.backward(net(torch.randn(3, 4)).sum())
        opt.step()
        opt.zero_grad()
        mon.log_step(step)
    mon.close()
    (alert,) = alerts(rest, srv, "lr-zero", "no_learning")
    assert alert["message"] == (
        "No learning: for 4 consecutive steps since step 0, every module's relative update "
        "‖Δθ‖/‖θ‖ was at most 1e-08 (largest 0, group0).")
    assert series(rest, srv, "lr-zero", "scalar/lr/group0") == [0.0] * 4


def grow(mon: Monitor, steps: int) -> None:
    """A depth head whose bias creeps up by 0.1 each step, behind the ×0 loss guard at 10."""
    torch.manual_seed(0)
    bias = torch.zeros(())
    for step in range(steps):
        z_raw = bias + 0.01 * torch.randn(64)
        mon.tensor("z_raw", z_raw, feeds_exp=True)
        mon.clip_guard(torch.exp(z_raw).mean(), threshold=10.0)
        mon.log_step(step)
        bias += 0.1


def test_the_horizon_setting_reaches_the_rule(start_server: Callable[..., ServerThread],
                                              monitors: MakeMonitor, rest: Rest) -> None:
    srv = start_server(headroom_horizon=100)  # ~870 steps from overflow is beyond it
    mon = monitors("growing-short-horizon", srv.ws_url)
    grow(mon, 30)
    mon.close()
    assert len(rest(srv, f"/runs/{run_id(rest, srv, 'growing-short-horizon')}/clips")[
        "clips"]) == 6
    assert alerts(rest, srv, "growing-short-horizon", "headroom") == []


def test_a_growing_pre_activation_warns_before_the_first_clip(
        server: ServerThread, monitors: MakeMonitor, rest: Rest) -> None:
    mon = monitors("growing", server.ws_url)
    grow(mon, 30)
    mon.close()

    clips = rest(server, f"/runs/{run_id(rest, server, 'growing')}/clips")["clips"]
    first_clip = min(c["step"] for c in clips)
    assert first_clip == 24  # exp(z) > 10 once z > 2.303: long before exp could overflow
    (alert,) = alerts(rest, server, "growing", "headroom")
    assert alert["series"] == "tensor/z_raw/headroom"
    assert alert["opened_step"] < first_clip
    assert alert["opened_step"] == 9  # the first full window of 10 rising steps
    assert alert["last_step"] == 29  # it still held when the run ended; the message is its
    assert alert["message"].startswith(  # latest
        "Overflow risk at step 29: z_raw (float32) max rose on 9 of the last 9 steps, by ")
    assert alert["details"]["slope"] == pytest.approx(0.1, abs=0.01)
    assert 800 < alert["details"]["steps_left"] < 900  # headroom ≈ 86 at 0.1 per step


def test_degenerate_denominators_and_samples_without_valid_pixels_alert(
        server: ServerThread, monitors: MakeMonitor, rest: Rest) -> None:
    mon = monitors("normalise", server.ws_url)
    for step in range(4):
        valid = torch.tensor([120, 80, 0 if step == 2 else 95])
        distance = valid.float() / 100  # mean distance over valid pixels: 0 for an empty one
        mon.denominator("mean_dist", distance.clamp_min(1e-9), valid_count=valid, eps=1e-6)
        mon.log_step(step)
    mon.close()

    found = {a["series"]: a for a in alerts(rest, server, "normalise", "normalisation")}
    tiny = found.pop("scalar/normalisation/mean_dist/denominator_min")
    empty = found.pop("scalar/normalisation/mean_dist/valid_zero")
    assert found == {}
    assert (tiny["severity"], tiny["first_step"]) == ("critical", 2)
    assert tiny["message"] == (
        "Degenerate normalisation at step 2: the denominator mean_dist fell to 1e-09, below "
        "ε = 1e-06; dividing by it makes huge, Inf or NaN values.")
    assert (empty["severity"], empty["first_step"]) == ("warning", 2)
    assert "1 sample has no valid pixel for mean_dist" in empty["message"]
    assert series(rest, server, "normalise", "scalar/normalisation/mean_dist/valid_min") == [
        80.0, 80.0, 0.0, 80.0]
