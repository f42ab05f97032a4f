"""Host-side resolution of the watch values (``origin.locate``) and the once-per-episode rule,
on real hooks and real staging, without a server; what each of the watch's two ways records
(every module on the device; the model level and a re-run of a bad step on the CPU)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from trainvitals.protocol import NonFiniteOrigin
from trainvitals.trainer_plugin.values import devices
from trainvitals.trainer_plugin.values.staging import StepStaging
from trainvitals.trainer_plugin.watch.modules import ModuleWatch
from trainvitals.trainer_plugin.watch.origin import WatchFrame, locate

NAN, INF = math.nan, math.inf
NAMES = ("m", "m.a", "m.b")
TYPES = ("Net", "Linear", "ReLU")


def frame(calls: list[tuple[int, int, int]], grads: tuple[int, ...] = (),
          parts: tuple[tuple[str, tuple[int, ...] | None], ...] = (("k", None),),
          width: int = 0) -> WatchFrame:
    return WatchFrame(NAMES, TYPES, ("m.a.weight", "m.a.bias"), 0, tuple(calls), grads, parts,
                      width)


# Module calls: a (1 in, 1 out), b (1 in, 1 out), root m (1 in, 1 out) — then grads of params.
CALLS = [(1, 1, 1), (2, 1, 1), (0, 1, 1)]


@pytest.mark.parametrize(("values", "expected"), [
    ([1, 2, 2, 2, 1, 2, 0.5, 0.5], None),  # all finite
    ([1, INF, INF, NAN, 1, NAN, 0.5, 0.5], ("inf", "forward", "m.a", None)),
    ([1, 2, 2, NAN, 1, NAN, NAN, 0.5], ("nan", "forward", "m.b", "m.a.weight")),
    ([1, 2, 2, 2, 1, 2, 0.5, INF], ("inf", "backward", None, "m.a.bias")),
    ([NAN, NAN, NAN, NAN, NAN, NAN, 0.5, 0.5], ("nan", "input", "m", None)),
    ([1, INF, INF, 2, 1, 2, 0.5, 0.5], None),  # an Inf the model removed again: not a problem
])
def test_locate(values: list[float], expected: tuple[str, str, str | None, str | None] | None
                ) -> None:
    found = locate(frame(CALLS, grads=(0, 1)), [float(v) for v in values])
    if expected is None:
        assert found is None
        return
    assert found is not None
    assert (found.kind, found.stage, found.module, found.param) == expected


def test_the_call_index_counts_the_root_calls_before_the_origin() -> None:
    calls = CALLS * 3  # three micro-batches in one step
    values = [1.0] * 12 + [1.0, NAN, NAN, NAN, 1.0, NAN] + [1.0] * 6
    found = locate(frame(calls), values)
    assert found is not None and (found.module, found.call) == ("m.a", 2)


def test_values_from_several_devices_are_put_back_in_order() -> None:
    f = frame(CALLS, parts=(("k/0", (0, 2, 4)), ("k/1", (1, 3, 5))), width=6)
    assert f.values({"k/0": [0.0, 2.0, 4.0], "k/1": [1.0, 3.0, 5.0]}) == [0, 1, 2, 3, 4, 5]


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(3, 3)
        self.b = nn.ReLU()

    def forward(self, x: torch.Tensor, extra: dict[str, torch.Tensor] | None = None
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor | int]]:
        h = self.b(self.a(x))
        return h, {"sum": h.sum(), "ids": 3}


def one_step(watch: ModuleWatch, net: Net, step: int, x: torch.Tensor) -> object:
    staging = StepStaging()
    h, _ = net(x, extra={"w": x})
    torch.autograd.backward(h.sum())
    net.zero_grad()
    f = watch.seal(staging, "w0")
    return watch.judge(f, staging.seal().wait(), step)


def test_the_device_path_records_every_floating_leaf_in_execution_order(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(devices, "READ_NOW", frozenset())  # CUDA's rules on the CPU
    net = Net()
    watch = ModuleWatch(net)
    h, _ = net(torch.ones(2, 3), extra={"w": torch.ones(1)})
    torch.autograd.backward(h.sum())
    # a: x in, 1 out; b: 1 in, 1 out; root: x and extra["w"] in, h and the sum out (not 3).
    assert watch._calls == [(1, 1, 1), (2, 1, 1), (0, 2, 2)]
    assert sorted(watch._grad_params) == [0, 1] and len(watch._grad_values) == 2
    staging = StepStaging()
    f = watch.seal(staging, "w0")
    assert (f.width, f.index, watch._index, watch._values) == (10, 0, 1, [])
    assert f.names == ("model", "model.a", "model.b")
    values = f.values(staging.seal().wait())
    with torch.no_grad():
        expected = float(net.a(torch.ones(1, 3)).abs().max())
    assert values[:2] == [1.0, pytest.approx(expected)]


def test_the_cpu_path_reads_the_model_level_and_re_runs_only_a_bad_step() -> None:
    torch.manual_seed(0)
    net = Net()
    watch = ModuleWatch(net)
    assert watch.reads_now and not net.a._forward_hooks  # only the model and its parameters
    h, _ = net(torch.ones(2, 3), extra={"w": torch.ones(1)})
    torch.autograd.backward(h.sum())
    staging = StepStaging()
    clean = watch.seal(staging, "w0")
    # A clean step: the model's two outputs, then the gradients (bias first: backward order).
    assert (clean.calls, clean.grads, clean.parts) == (((0, 0, 2),), (1, 0), ())
    assert clean.host is not None and all(math.isfinite(v) for v in clean.host)
    assert len(staging) == 0  # read at once: nothing staged

    with torch.no_grad():
        net.a.weight[0, 0] = INF
    h, _ = net(torch.ones(2, 3), extra={"w": torch.ones(1)})
    expected = h.detach().clone()
    rng = torch.get_rng_state()
    torch.autograd.backward(h.sum())
    bad = watch.seal(staging, "w0")
    # The bad step was re-run with every module hooked; the hooks came off again after.
    assert bad.calls == ((1, 1, 1), (2, 1, 1), (0, 2, 2))
    assert bad.host is not None  # a: x in, Inf out; b: Inf in and out; root: x, w in, Inf out
    assert [math.isinf(v) for v in bad.host[:8]] == [False, True, True, True,
                                                     False, False, True, True]
    assert not net.a._forward_hooks and torch.equal(h.detach(), expected)
    assert torch.equal(torch.get_rng_state(), rng)
    found = locate(bad, bad.values({}))
    assert found is not None and (found.module, found.stage) == ("model.a", "forward")

    net(torch.ones(2, 3))  # the next step of the same episode: not re-run; as the outputs
    assert watch.seal(staging, "w0").calls == ((0, 1, 2),)  # are non-finite, inputs are read


def test_an_origin_is_sent_once_per_run_of_non_finite_steps(rules: str) -> None:
    torch.manual_seed(0)
    net = Net()
    watch = ModuleWatch(net, name="net")
    good, bad = torch.ones(2, 3), torch.full((2, 3), INF)
    with torch.no_grad():
        net.a.weight[0, 0] = INF  # finite inputs, Inf and NaN out of `a`
    origins = [one_step(watch, net, s, good) for s in range(3)]
    with torch.no_grad():
        net.a.weight[0, 0] = 0.5
    origins += [one_step(watch, net, 3, good), one_step(watch, net, 4, bad)]
    first, *rest = origins
    assert isinstance(first, NonFiniteOrigin)
    assert (first.module, first.step, first.stage) == ("net.a", 0, "forward")
    assert rest[:3] == [None, None, None]  # the same episode, then a clean step
    assert isinstance(rest[3], NonFiniteOrigin)
    assert (rest[3].stage, rest[3].step, rest[3].module) == ("input", 4, "net")


def test_time_watch_reports_what_it_hooked_and_takes_its_hooks_off(rules: str) -> None:
    from trainvitals.trainer_plugin.watch.cost import time_watch

    net = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    cost = time_watch(net, torch.randn(3, 4), steps=2, warmup=1)
    assert (cost.modules, cost.params) == (4, 4)
    # Per step, on the device: 4 module calls with 1 input and 1 output value each, and 4
    # gradients; on the CPU: the model's output and the 4 gradients (its input is read only
    # when the output is not finite).
    assert cost.values_per_step == (4 * 2 + 4 if rules == "cuda rules" else 1 + 4)
    assert cost.plain_s > 0 and cost.watched_s > 0
    assert math.isclose(cost.overhead, cost.watched_s / cost.plain_s - 1)
    assert not net[0]._forward_hooks and not net[0]._forward_pre_hooks


class Hidden(nn.Module):
    """x·w with an Inf in w: at x = 0 the product is NaN — inside the model only."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.w


class Masking(nn.Module):
    """Removes non-finite values before they leave: the output stays finite, but the
    gradient that flows back through ``hidden`` (0 · Inf) does not."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 3)
        self.hidden = Hidden()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.hidden(self.lin(x))
        return torch.where(torch.isfinite(h), h, torch.zeros_like(h))


def test_a_module_that_went_non_finite_inside_a_finite_model_is_named_from_the_gradients(
        rules: str) -> None:
    torch.manual_seed(0)
    net = Masking()
    with torch.no_grad():
        net.lin.weight.zero_()
        net.lin.bias.zero_()  # lin's output is 0 ...
        net.hidden.w[1] = INF  # ... and 0 · Inf is NaN
    watch = ModuleWatch(net)
    staging = StepStaging()
    out = net(torch.ones(2, 3))
    assert bool(torch.isfinite(out).all())
    torch.autograd.backward(out.sum())
    origin = watch.judge(watch.seal(staging, "w0"), staging.seal().wait(), 7)
    assert isinstance(origin, NonFiniteOrigin)
    assert (origin.stage, origin.module, origin.param) == (
        "forward", "model.hidden", "model.lin.bias")  # lin's bias: first in backward order


class Log(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log(x)


class LogNet(nn.Module):
    """An identity-initialised ``lin`` → ``log`` → ``out``: a 0 input makes -Inf in ``log``,
    and its gradient (1/0) makes ``lin``'s weights non-finite once the optimizer applies it —
    re-run after that, ``lin`` would look like the origin."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 3)
        self.log = Log()
        self.out = nn.Linear(3, 1)
        with torch.no_grad():
            self.lin.weight.copy_(torch.eye(3))
            self.lin.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.out(self.log(self.lin(x)))
        return out


def test_the_origin_is_found_even_when_the_trainer_applies_the_non_finite_update(
        rules: str) -> None:
    torch.manual_seed(0)
    net = LogNet()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    watch = ModuleWatch(net, name="net")
    staging = StepStaging()
    x = torch.ones(2, 3)
    x[0, 0] = 0.0
    torch.autograd.backward(net(x).sum())
    opt.step()  # NaN gradients go into every weight before log_step
    assert not bool(torch.isfinite(net.lin.weight).all())
    origin = watch.judge(watch.seal(staging, "w0"), staging.seal().wait(), 3)
    assert isinstance(origin, NonFiniteOrigin)
    assert (origin.kind, origin.stage, origin.module) == ("inf", "forward", "net.log")
