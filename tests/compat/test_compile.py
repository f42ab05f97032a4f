"""torch.compile: trainvitals costs no graph break and records the same values.

Dynamo's own counters are the judge (``torch._dynamo.utils.counters``, ``torch._dynamo.explain``).
The graph-break tests run at default settings (the inductor backend); the tests that compare
values use the ``aot_eager`` backend, which traces exactly as the default does (the same
Dynamo front end and AOT autograd) but skips inductor's C++ code generation, slow on a small
CPU. CPU only here: CUDA graphs (``mode="reduce-overhead"``) are unproven (no GPU).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import pytest
import torch
import torch._dynamo
from torch import nn
from torch._dynamo.utils import counters

from trainvitals import Monitor
from trainvitals.trainer_plugin.values import devices

from .conftest import Told

pytestmark = [
    pytest.mark.slow,  # compiling takes seconds on a small CPU
    # torch's own noise while it compiles (inductor's code generation; Dynamo's fake tensors)
    pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:The .grad attribute of a Tensor that is not a leaf"),
]


class Net(nn.Module):
    """Two layers and an ``exp`` head; ``poison`` (a buffer) is added to the head's input, so a
    test can plant a NaN at a chosen step without a Python branch (no recompile)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(8, 16), nn.GELU())
        self.head = Head()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


class Head(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(16, 1)
        self.register_buffer("poison", torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.exp(self.proj(x) * 0.1 + self.poison)


@pytest.fixture(autouse=True)
def fresh_dynamo() -> Iterator[None]:
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


def _batches(n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(4, 8, generator=g), torch.randn(4, 1, generator=g)) for _ in range(n)]


def _train(mon: Monitor, net: Net, model: Callable[[torch.Tensor], torch.Tensor], steps: int,
           nan_at: int | None = None) -> None:
    """The user's loop; trainvitals' calls outside the compiled model."""
    opt = torch.optim.SGD(net.parameters(), lr=1e-2)
    mon.watch_optimizer(opt, net)
    for step, (x, y) in enumerate(_batches(steps)):
        net.head.poison.fill_(math.nan if step == nan_at else 0.0)
        out = model(x)
        mon.tensor("out", out)
        loss = nn.functional.mse_loss(out, y)
        loss.backward()
        norm = nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        mon.log_step(step, loss=loss, grad_norm=norm)


def test_watch_then_compile_is_one_graph_without_breaks() -> None:
    torch.manual_seed(0)
    net = Net()
    mon = Monitor("compile-breaks", server=None, spool=None)
    mon.watch(net)
    model = torch.compile(net)  # default settings: inductor
    _train(mon, net, model, steps=3)
    mon.close()
    assert dict(counters["graph_break"]) == {}
    assert counters["stats"]["unique_graphs"] == 1
    torch._dynamo.reset()
    explained = torch._dynamo.explain(net)(torch.randn(4, 8))
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), [
        b.reason for b in explained.break_reasons]


def test_the_check_can_fail_a_hook_that_reads_a_value_breaks_the_graph() -> None:
    """The counters above are not vacuous: an ordinary hook that calls ``.item()`` (what a
    monitor that reads values does) costs graph breaks at once."""
    net = Net()
    net.head.register_forward_hook(lambda m, a, out: out.abs().max().item())
    model = torch.compile(net, backend="aot_eager")
    model(torch.randn(4, 8))
    assert sum(counters["graph_break"].values()) > 0


def test_tensor_and_clip_guard_compile_with_fullgraph() -> None:
    mon = Monitor("compile-fullgraph", server=None, spool=None)

    @torch.compile(fullgraph=True)  # any graph break is an error here
    def guarded_loss(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        z = x @ w
        mon.tensor("z", z, feeds_exp=True)
        loss = torch.exp(z).mean()
        return mon.clip_guard(loss, threshold=10.0, components={"exp": loss})

    w = torch.randn(4, 4)
    for step in range(3):
        guarded_loss(torch.randn(3, 4), w)
        mon.log_step(step)
    mon.close()
    assert dict(counters["graph_break"]) == {}


def test_compiled_and_eager_runs_record_the_same_values(
        monitors: Callable[..., Monitor], told: Callable[..., Told]) -> None:
    names = ("loss", "grad_norm", "tensor/out/max", "tensor/out/mean", "scalar/update/body",
             "scalar/update/head")
    for run, compiled in (("eager", False), ("compiled", True)):
        torch.manual_seed(0)
        net = Net()
        mon = monitors(run)
        mon.watch(net)
        model = torch.compile(net, backend="aot_eager") if compiled else net
        _train(mon, net, model, steps=6)
        mon.close(timeout=30)
    eager, compiled_run = told("eager", *names), told("compiled", *names)
    assert set(eager.series) == set(names)
    for name in names:
        assert eager.steps(name) == list(range(6)) == compiled_run.steps(name), name
        for step in range(6):
            assert compiled_run.series[name][step] == pytest.approx(
                eager.series[name][step], rel=1e-5, abs=1e-7), (name, step)
    assert dict(counters["graph_break"]) == {}


@pytest.mark.parametrize("rules", ["cuda rules", "cpu rules"])
def test_a_watch_inside_a_compiled_step_still_finds_where_nan_began(
        rules: str, monitors: Callable[..., Monitor], told: Callable[..., Told],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The whole step compiled, the model's hooks traced into its graph: their values stay on
    the device (no sync), and the server names where the NaN was made.

    On CUDA every module is hooked (the device path) and the module is named. The CPU path
    hooks only the root and finds the module by re-running the step eagerly, which cannot
    happen inside a graph: a compiled step on the CPU names the model (and says so)."""
    if rules == "cuda rules":  # the CPU tensors take CUDA's path (as in the no-sync tests)
        monkeypatch.setattr(devices, "READ_NOW", frozenset())
    torch.manual_seed(0)
    net = Net()
    mon = monitors("compiled-step-origin")
    mon.watch(net)

    @torch.compile(backend="aot_eager")
    def forward_loss(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = net(x)
        return out, nn.functional.mse_loss(out, y)

    opt = torch.optim.SGD(net.parameters(), lr=1e-2)
    for step, (x, y) in enumerate(_batches(8)):
        net.head.poison.fill_(math.nan if step == 5 else 0.0)
        _, loss = forward_loss(x, y)
        loss.backward()
        opt.step()
        opt.zero_grad()
        mon.log_step(step, loss=loss)
    mon.close(timeout=30)
    assert dict(counters["graph_break"]) == {}
    incident = told("compiled-step-origin").incidents[0]
    assert incident["onset_step"] == 5
    where = "head (Head)" if rules == "cuda rules" else "model (Net)"
    assert f"{where} first made NaN at step 5" in incident["headline"], incident["headline"]


def test_log_step_inside_a_compiled_function_costs_one_break_and_records_every_step(
        monitors: Callable[..., Monitor], told: Callable[..., Told]) -> None:
    mon = monitors("compile-log-step")

    @torch.compile(backend="aot_eager")
    def train_step(x: torch.Tensor, step: int) -> torch.Tensor:
        loss = (x * 2.0).pow(2).mean()
        mon.tensor("x", x)
        mon.log_step(step, loss=loss)  # its host half is one disabled frame: one break
        return loss

    losses = [float(train_step(torch.full((3,), float(i)), i)) for i in range(4)]
    mon.close(timeout=30)
    seen = told("compile-log-step", "loss", "tensor/x/max")
    assert seen.steps("loss") == [0, 1, 2, 3]
    assert [seen.series["loss"][i] for i in range(4)] == pytest.approx(losses)
    assert [seen.series["tensor/x/max"][i] for i in range(4)] == [0.0, 1.0, 2.0, 3.0]
    (reason,) = counters["graph_break"]  # one kind of break, at each compiled call
    assert "Monitor._end_step" in reason and "torch.compiler.disable" in reason, reason
