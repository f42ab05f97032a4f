"""The demo trainer reproduces the write-up's phases with real torch steps (monitor=None).

Runs are shortened (the config allows it) but keep every phase: healthy → spike → stall,
overflow → abort, softplus → recovery. Each run is done once per module and shared.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator

import pytest
import torch

from trainvitals.demo.train import DemoConfig, DemoResult, MonitorLike, train

# Short but complete: 46 healthy steps, the spike after step 45, 24 steps after it.
SHORT = DemoConfig(steps=70, spike_step=45, num_batches=16)
TAIL = 20  # the last TAIL steps must all be stuck
TINY = dataclasses.replace(SHORT, steps=24, spike_step=12)  # still spikes and stalls


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """One intra-op thread: these convs are tiny, and two OpenMP threads on a busy 2-core box
    spin-wait each other (measured: ~5x the CPU time). Restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def exp_run() -> DemoResult:
    return train(SHORT)


@pytest.fixture(scope="module")
def softplus_run() -> DemoResult:
    return train(dataclasses.replace(SHORT, depth_activation="softplus", steps=80))


@pytest.fixture(scope="module")
def tiny_run() -> DemoResult:
    return train(TINY)


def test_exp_is_healthy_then_silently_stuck(exp_run: DemoResult) -> None:
    hist, spike, clip = exp_run.history, SHORT.spike_step, SHORT.clip_loss
    assert exp_run.status == "finished" and exp_run.steps_run == SHORT.steps
    assert len(hist) == SHORT.steps
    healthy = hist[: spike + 1]
    assert all(math.isfinite(h["loss_raw"]) and h["loss_raw"] < clip for h in healthy)
    assert all(h["loss_used"] == h["loss_raw"] and h["grad_norm_pre"] > 0 for h in healthy)
    first, last = healthy[:5], healthy[-5:]
    assert sum(h["loss_raw"] for h in last) < sum(h["loss_raw"] for h in first)  # it learns
    # From the first step after the spike to the end: clipped, zero loss used, zero gradient.
    after = hist[spike + 1 :]
    assert all(h["loss_raw"] > clip and math.isfinite(h["loss_raw"]) for h in after)
    assert all(h["loss_used"] == 0.0 and h["grad_norm_pre"] == 0.0 for h in after)
    assert all(h["clipped"] == 1.0 for h in after)
    assert len(after) >= TAIL


def test_softplus_recovers_from_the_same_spike(softplus_run: DemoResult) -> None:
    hist, spike, clip = softplus_run.history, SHORT.spike_step, SHORT.clip_loss
    assert softplus_run.status == "finished"
    after = hist[spike + 1 :]
    assert after[0]["loss_raw"] > 2 * hist[spike]["loss_raw"]  # the spike did hit
    assert not any(h["clipped"] for h in after)
    assert all(h["grad_norm_pre"] > 0 for h in after)
    head = [h["loss_raw"] for h in after[:5]]
    tail = [h["loss_raw"] for h in after[-5:]]
    assert max(tail) < clip
    assert sum(tail) < 0.8 * sum(head)  # and keeps learning


def test_overflow_crashes_on_the_non_finite_loss() -> None:
    config = dataclasses.replace(SHORT, spike_step=10, overflow=True)
    result = train(config)
    assert result.status == "crashed"
    assert result.steps_run == config.spike_step + 2  # the step right after the spike aborts
    assert "non-finite" in result.reason
    last = result.history[-1]
    assert not math.isfinite(last["loss_raw"]) and not math.isfinite(last["loss_used"])
    assert last["z_raw_max"] > math.log(torch.finfo(torch.float32).max)  # exp overflowed


def test_an_empty_sample_crashes_through_the_normalisation() -> None:
    result = train(dataclasses.replace(SHORT, steps=10, empty_sample_step=5))
    assert result.status == "crashed" and result.steps_run == 6
    assert math.isnan(result.history[-1]["loss_raw"])


def test_same_seed_same_history(tiny_run: DemoResult) -> None:
    again = train(TINY)
    assert again.history == tiny_run.history
    assert any(h["clipped"] for h in again.history)  # the comparison covers the stall too
    other = train(dataclasses.replace(TINY, steps=3, seed=1))
    assert other.history != tiny_run.history[:3]


class RecordingMonitor:
    """A stand-in for the real monitor: the protocol's semantics, plus a call log."""

    def __init__(self) -> None:
        self.tensors: list[tuple[str, bool]] = []
        self.steps: list[dict[str, object]] = []

    def tensor(self, name: str, t: torch.Tensor, *, feeds_exp: bool = False) -> None:
        self.tensors.append((name, feeds_exp))

    def clip_guard(
        self, raw_loss: torch.Tensor, threshold: float, components: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        return torch.where(raw_loss > threshold, raw_loss * 0.0, raw_loss)

    def log_step(self, step: int, **values: object) -> None:
        self.steps.append({"step": step, **values})


def test_monitor_path_matches_the_plain_guard(tiny_run: DemoResult) -> None:
    config = TINY
    monitor = RecordingMonitor()
    typed: MonitorLike = monitor  # the stand-in satisfies the protocol
    assert train(config, typed).history == tiny_run.history
    assert [s["step"] for s in monitor.steps] == list(range(config.steps))
    names = {name for name, _ in monitor.tensors}
    assert {"depth_raw", "depth", "local_points"} <= names
    assert ("depth_raw", True) in monitor.tensors  # exp: z_raw feeds an exponential
    logged = monitor.steps[config.spike_step + 1]
    assert isinstance(logged["grad_norm"], torch.Tensor) and logged["grad_norm"].item() == 0.0
    assert logged["loss"] != 0 and logged["loss_used"] == 0


def test_progress_sees_every_step() -> None:
    seen: list[int] = []
    config = dataclasses.replace(SHORT, steps=5, record_history=False)
    result = train(config, progress=lambda step, values: seen.append(step))
    assert seen == list(range(5)) and result.history == [] and result.steps_run == 5
