"""The op-level re-run: same randomness, nothing of the training touched, intentional ±Inf
skipped, inputs kept only for a window of steps."""

from __future__ import annotations

import inspect

import pytest
import torch
from torch import nn

from trainvitals.trainer_plugin.watch.optrace import (
    MAX_CALLS_PER_STEP,
    CallRecorder,
    OpTracer,
    trace_call,
)


class Noisy(nn.Module):
    """BatchNorm (running statistics), dropout (randomness), a draw it remembers, then log."""

    def __init__(self) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(4)
        self.drop = nn.Dropout(0.5)
        self.draws: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.drop(self.bn(x))
        self.draws.append(torch.rand(3))
        out: torch.Tensor = torch.log(h)  # NaN where BatchNorm made h negative
        return out


def line_of(function: object, marker: str) -> int:
    lines, first = inspect.getsourcelines(function)  # type: ignore[arg-type]
    (offset,) = [i for i, line in enumerate(lines) if marker in line]
    return first + offset


def test_the_rerun_replays_the_randomness_and_leaves_the_training_untouched() -> None:
    torch.manual_seed(3)
    model = Noisy().train()
    x = torch.randn(16, 4)
    recorder = CallRecorder(window=2)
    recorder.record(0, (x,), {})  # what the root's forward pre-hook does
    model(x)  # the training forward: updates the running statistics, draws numbers
    drawn = model.draws[-1]
    rng = torch.get_rng_state()
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    params = {n: p.clone() for n, p in model.named_parameters()}
    call = recorder.get(0, 0)
    assert call is not None

    found = trace_call(model, call, lambda: 7)

    assert found is not None
    assert (found.op, found.kind, found.module) == ("log", "nan", 7)
    assert found.source == (f"{inspect.getsourcefile(Noisy)}:"
                            f"{line_of(Noisy.forward, 'NaN where')} in forward")
    assert torch.equal(model.draws[-1], drawn)  # the recorded RNG state was restored
    assert torch.equal(torch.get_rng_state(), rng)  # and the training's afterwards
    assert model.training
    for name, value in model.named_buffers():
        assert torch.equal(value, buffers[name]), name  # running stats, num_batches_tracked
    for name, value in model.named_parameters():
        assert torch.equal(value, params[name]) and value.grad is None, name


def test_without_restoring_the_buffers_the_running_stats_would_move() -> None:
    # The control for the test above: a plain re-run does change them.
    model = Noisy().train()
    x = torch.randn(16, 4)
    mean = model.bn.running_mean
    assert mean is not None
    before = mean.clone()
    with torch.no_grad():
        model(x)
    assert not torch.equal(mean, before)


def planted(x: torch.Tensor) -> torch.Tensor:
    masked = x.masked_fill(x > 0.5, float("-inf"))  # asked for: not an origin
    scratch = torch.empty(1000)  # uninitialised: may hold anything, not an origin
    soft = torch.softmax(masked, dim=-1) + scratch[:0].sum()
    out: torch.Tensor = soft / (x - x)  # 0/0 and x/0: the origin
    return out


def test_asked_for_infinities_and_uninitialised_memory_are_not_origins() -> None:
    x = torch.rand(3, 4)
    x[:, 0], x[:, 1] = 0.9, 0.1  # every row has a masked and an unmasked entry
    with OpTracer(lambda: None) as tracer, pytest.raises(Exception) as stopped:
        planted(x)
    assert type(stopped.value).__name__ == "_Found"  # the tracer stops the run at its finding
    assert tracer.found is not None
    assert (tracer.found.op, tracer.found.kind) == ("div", "nan")
    assert tracer.found.source is not None
    assert tracer.found.source.endswith(f":{line_of(planted, 'the origin')} in planted")


def test_an_op_given_non_finite_inputs_is_not_the_origin() -> None:
    def two_steps(x: torch.Tensor) -> torch.Tensor:
        inf = torch.exp(x * 100)  # overflow: the origin
        out: torch.Tensor = inf - inf  # NaN, but from Inf inputs
        return out

    with OpTracer(lambda: None) as tracer, pytest.raises(Exception) as stopped:
        two_steps(torch.full((2,), 2.0))
    assert type(stopped.value).__name__ == "_Found"
    assert tracer.found is not None and (tracer.found.op, tracer.found.kind) == ("exp", "inf")


def test_the_recorder_keeps_a_window_of_steps_and_a_few_calls_each() -> None:
    recorder = CallRecorder(window=2)
    x = torch.ones(2, requires_grad=True) * 2  # part of a graph: kept detached
    for step in range(3):
        for _ in range(MAX_CALLS_PER_STEP + 3):
            recorder.record(step, (x,), {"scale": x})
    assert recorder.get(0, 0) is None  # fell out of the window
    kept = recorder.get(2, MAX_CALLS_PER_STEP - 1)
    assert kept is not None and recorder.get(2, MAX_CALLS_PER_STEP) is None
    assert not kept.args[0].requires_grad and kept.args[0].data_ptr() == x.data_ptr()
    assert not kept.kwargs["scale"].requires_grad
    assert recorder.get(1, -1) is None


class ExpHead(nn.Module):
    """A point head with its ``exp`` inline in the root module's own forward."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raw = self.lin(x)
        depth: torch.Tensor = torch.exp(raw)  # overflows once raw passes 88.7
        return depth


def test_the_op_is_named_for_the_first_forward_made_value_after_an_earlier_bad_step(
        rules: str) -> None:
    """Step 1's loss overflows in its own mean (the model's outputs are finite, its gradients
    not); step 2's forward overflows in the root's inline exp. The trainer goes on (it skips
    the update of a step with non-finite gradients, as a GradScaler does): the origin of step 2
    still names exp and its line."""
    from trainvitals.protocol import NonFiniteOrigin
    from trainvitals.trainer_plugin.values.staging import StepStaging
    from trainvitals.trainer_plugin.watch.modules import ModuleWatch

    torch.manual_seed(0)
    net = ExpHead()
    opt = torch.optim.SGD(net.parameters(), lr=0.0)  # steps; its updates change nothing
    watch = ModuleWatch(net, name="model", op_trace=True)
    x = torch.ones(2, 3)
    origins = []
    for step, bias in enumerate((0.0, 80.0, 95.0)):
        with torch.no_grad():
            net.lin.bias.fill_(bias)
        staging = StepStaging()
        out = net(x)
        loss = out.mean() * 1e5  # step 1: Inf in the loss and its gradients, not in exp(80)
        opt.zero_grad()
        loss.backward()
        if all(bool(torch.isfinite(p.grad).all()) for p in net.parameters()):
            opt.step()
        frame = watch.seal(staging, "w0")
        origins.append(watch.judge(frame, staging.seal().wait(), step))
        traced = watch.poll()  # the device path traces here, at the next log_step
        if traced is not None:
            origins[-1] = traced
    assert origins[0] is None, origins
    assert isinstance(origins[1], NonFiniteOrigin) and origins[1].stage == "backward", origins
    late = origins[2]
    if rules == "cuda rules":  # the device path cannot read the weights without a sync, so it
        assert late is None    # keeps the episode's first origin (a stated limitation)
        return
    assert isinstance(late, NonFiniteOrigin), origins
    assert (late.step, late.stage, late.op, late.module_type) == (2, "forward", "exp",
                                                                  "ExpHead")
    assert late.source == (f"{inspect.getsourcefile(ExpHead)}:"
                           f"{line_of(ExpHead.forward, 'overflows once')} in forward")
