"""``Monitor.watch``: planted faults are attributed to their module, parameter, op and line.

Real parts throughout: a real server on a free port, real torch training steps, the records
read back through the REST API. Each attribution test runs both ways of the watch (the
``rules`` fixture): the CPU's (the model level read every step, a bad step re-run with every
module hooked) and CUDA's (every module reduced on the device every step).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from trainvitals import Monitor
from trainvitals.server import ServerThread

Rest = Callable[..., Any]
MakeMonitor = Callable[..., Monitor]
BAD_STEP = 5


class Planted(nn.Module):
    """log of its input: finite for the usual positive inputs, NaN for a negative one."""

    def __init__(self) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = torch.log(x) * self.gain  # the planted fault
        return out


class Net(nn.Module):
    """``body`` (identity-initialised) → ``planted``: the planted module is last before the
    loss, so its parameter is the first whose gradient goes non-finite in backward order."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(4, 4)
        with torch.no_grad():
            self.body.weight.copy_(torch.eye(4))
            self.body.bias.zero_()
        self.planted = Planted()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.planted(self.body(x))
        return out


def planted_source() -> str:
    """``path:line in forward`` of the planted line, found by inspection."""
    lines, first = inspect.getsourcelines(Planted.forward)
    (offset,) = [i for i, line in enumerate(lines) if "the planted fault" in line]
    return f"{inspect.getsourcefile(Planted)}:{first + offset} in forward"


def batch(step: int) -> torch.Tensor:
    x = 1.0 + torch.rand(8, 4)  # positive: log is finite
    if step == BAD_STEP:
        x[3, 2] = -1.0  # one negative input: log gives NaN
    return x


def train(mon: Monitor, net: nn.Module, steps: int, *, flush_after_bad: bool = False,
          abort_on_nan: bool = False) -> None:
    """SGD steps; a non-finite loss skips the update (or aborts), as trainers do."""
    opt = torch.optim.SGD(net.parameters(), lr=1e-3)
    for step in range(steps):
        loss = net(batch(step)).pow(2).mean()
        torch.autograd.backward(loss)
        finite = bool(torch.isfinite(loss))  # the test's trainer reads it, not the plugin
        if finite:
            opt.step()
        opt.zero_grad()
        mon.log_step(step, loss=loss)
        if step == BAD_STEP and flush_after_bad:
            assert mon.flush(15)  # the sender has judged it: the trace runs at the next step
        if not finite and abort_on_nan:
            raise FloatingPointError(f"loss is {loss.item()} at step {step}")


def run_id(rest: Rest, srv: ServerThread, name: str) -> int:
    (row,) = [r for r in rest(srv, "/runs")["runs"] if r["name"] == name]
    return int(row["id"])


def origin_alert(rest: Rest, srv: ServerThread, run: str) -> dict[str, Any]:
    (alert,) = [a for a in rest(srv, "/alerts", run=run)["alerts"]
                if a["rule"] == "nonfinite" and a["series"] == "origin"]
    return alert  # type: ignore[no-any-return]


def test_a_nan_made_in_a_module_is_attributed_to_it_its_parameter_and_the_op_line(
        rules: str, server: ServerThread, monitors: MakeMonitor, rest: Rest) -> None:
    torch.manual_seed(0)
    net = Net()
    mon = monitors("planted-log", server.ws_url)
    mon.watch(net, op_trace=True)
    train(mon, net, 9, flush_after_bad=True)
    mon.close()

    (origin,) = rest(server, f"/runs/{run_id(rest, server, 'planted-log')}/origins")["origins"]
    assert origin == {
        # The CPU path traces the op at once, before the optimizer step, so the op arrives
        # with the step itself; the device path traces at the next step's log_step.
        "rank": 0, "step": BAD_STEP,
        "reported_step": BAD_STEP + (1 if rules == "cuda rules" else 0), "kind": "nan",
        "stage": "forward", "module": "model.planted", "module_type": "Planted",
        "param": "model.planted.gain", "op": "log", "source": planted_source()}
    alert = origin_alert(rest, server, "planted-log")
    line = planted_source().rsplit("/", 1)[1]
    assert alert["message"] == (
        f"NaN first produced by model.planted (Planted) at step {BAD_STEP}: log at {line}; "
        "first non-finite gradient: model.planted.gain.")
    assert (alert["severity"], alert["first_step"]) == ("critical", BAD_STEP)


def test_without_op_trace_the_module_and_parameter_are_named_at_the_step_itself(
        rules: str, server: ServerThread, monitors: MakeMonitor, rest: Rest) -> None:
    torch.manual_seed(0)
    net = Net()
    mon = monitors("planted-no-trace", server.ws_url)
    mon.watch(net, name="net")
    train(mon, net, 8)
    mon.close()

    rid = run_id(rest, server, "planted-no-trace")
    (origin,) = rest(server, f"/runs/{rid}/origins")["origins"]
    assert (origin["step"], origin["reported_step"], origin["module"], origin["param"]) == (
        BAD_STEP, BAD_STEP, "net.planted", "net.planted.gain")
    assert origin["op"] is None and origin["source"] is None
    loss_alert = next(a for a in rest(server, "/alerts", run="planted-no-trace")["alerts"]
                      if a["series"] == "loss")
    assert loss_alert["message"] == (
        f"Non-finite value at step {BAD_STEP}: loss is NaN. NaN first produced by net.planted "
        "(Planted) at step 5; first non-finite gradient: net.planted.gain.")
    assert loss_alert["details"]["origin_module"] == "net.planted"


def test_a_trainer_that_aborts_at_the_nan_still_gets_the_op_trace_at_close(
        rules: str, server: ServerThread, monitors: MakeMonitor, rest: Rest) -> None:
    torch.manual_seed(0)
    net = Net()
    mon = monitors("planted-abort", server.ws_url)
    mon.watch(net, op_trace=True)
    try:
        train(mon, net, 20, abort_on_nan=True)
    except FloatingPointError:
        mon.close(status="crashed", reason="non-finite loss")
    rid = run_id(rest, server, "planted-abort")
    (origin,) = rest(server, f"/runs/{rid}/origins")["origins"]
    assert (origin["step"], origin["op"], origin["source"]) == (BAD_STEP, "log",
                                                                planted_source())
    assert rest(server, f"/runs/{rid}")["run"]["last_step"] == BAD_STEP


class ZeroNorm(nn.Module):
    """‖x·w‖ per row, as sqrt of a sum of squares: finite forward; at a row of zeros the
    gradient is sqrt's 1/(2·0) = Inf times 0 = NaN."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = (x * self.w).pow(2).sum(dim=-1, keepdim=True).sqrt()
        return out


class TwoBranch(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.left = nn.Linear(4, 1)
        self.norm = ZeroNorm()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.left(x) + self.norm(x)
        return out


def test_a_nan_made_only_in_the_backward_pass_names_the_parameter(
        rules: str, server: ServerThread, monitors: MakeMonitor, rest: Rest) -> None:
    torch.manual_seed(0)
    net = TwoBranch()
    mon = monitors("backward-only", server.ws_url)
    mon.watch(net, op_trace=True)
    for step in range(4):
        x = torch.rand(6, 4) + 0.5
        if step == 2:
            x[1] = 0.0  # forward stays finite; the norm's gradient does not
        out = net(x)
        assert bool(torch.isfinite(out).all())
        torch.autograd.backward(out.sum())
        net.zero_grad()
        mon.log_step(step)
    mon.close()
    (origin,) = rest(server, f"/runs/{run_id(rest, server, 'backward-only')}/origins")["origins"]
    assert (origin["step"], origin["stage"], origin["module"], origin["param"], origin["op"]) == (
        2, "backward", None, "model.norm.w", None)
    assert origin_alert(rest, server, "backward-only")["message"] == (
        "NaN first appeared in the backward pass at step 2; first non-finite gradient: "
        "model.norm.w.")


def test_a_nan_in_the_data_is_blamed_on_the_inputs_not_a_module(
        rules: str, server: ServerThread, monitors: MakeMonitor, rest: Rest) -> None:
    net = Net()
    mon = monitors("nan-data", server.ws_url)
    mon.watch(net)
    for step in range(3):
        x = 1.0 + torch.rand(8, 4)
        if step == 1:
            x[0, 0] = float("inf")
        torch.autograd.backward(net(x).sum())
        net.zero_grad()
        mon.log_step(step)
    mon.close()
    (origin,) = rest(server, f"/runs/{run_id(rest, server, 'nan-data')}/origins")["origins"]
    assert (origin["step"], origin["kind"], origin["stage"], origin["module"]) == (
        1, "inf", "input", "model")
    assert origin_alert(rest, server, "nan-data")["message"].startswith(
        "Inf came in with the inputs of model (Net) at step 1")


class Masked(nn.Module):
    """Puts -inf in a mask and removes it again: intentional, never an origin."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.masked_fill(x < 0.2, float("-inf"))


class MaskNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.mask = Masked()
        self.lin = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.lin(torch.softmax(self.mask(x), dim=-1))
        return out


def test_an_intentional_inf_that_the_model_removes_is_not_an_origin(
        rules: str, server: ServerThread, monitors: MakeMonitor, rest: Rest) -> None:
    net = MaskNet()
    mon = monitors("masked", server.ws_url)
    mon.watch(net)
    for step in range(3):
        x = torch.rand(5, 4)
        x[:, 0] = 0.9  # every row keeps one unmasked entry
        x[0, 1] = 0.0  # masked
        torch.autograd.backward(net(x).sum())
        mon.log_step(step)
    mon.close()
    assert rest(server, f"/runs/{run_id(rest, server, 'masked')}/origins")["origins"] == []


def test_remove_takes_every_hook_off(rules: str, monitors: MakeMonitor) -> None:
    net = Net()
    mon = monitors("removed", None, spool=None)
    watch = mon.watch(net)
    assert (len(net._forward_hooks), len(net._forward_pre_hooks)) == (1, 1)
    counts = (len(net.planted._forward_hooks), len(net.planted._forward_pre_hooks))
    assert counts == ((1, 1) if rules == "cuda rules" else (0, 0))  # the CPU: the model only
    assert len(net.planted.gain._post_accumulate_grad_hooks or {}) == 1
    watch.remove()
    assert (len(net.planted._forward_hooks), len(net.planted._forward_pre_hooks)) == (0, 0)
    assert (len(net._forward_hooks), len(net._forward_pre_hooks)) == (0, 0)
    assert not net.planted.gain._post_accumulate_grad_hooks
    torch.autograd.backward(net(batch(0)).sum())
    mon.log_step(0)
    assert watch.removed and watch._values == [] and watch._grad_values == []
