"""The loss guard: same result as ``if loss > clip: loss = loss * 0.0``, computed on the device.

The guard tests run twice (the ``rules`` fixture): with the CPU's shortcut (the ``if`` itself,
on a value read at once) and with CUDA's rules (``torch.where`` on the device)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
import torch

from trainvitals import Monitor, NonFiniteLossError
from trainvitals.trainer_plugin import DeliveryStats
from trainvitals.trainer_plugin.values.clip import GuardSpec, guard_loss, resolve_clip

NAN, INF = math.nan, math.inf
THRESHOLD = 10.0
TABLE = [0.0, -0.0, 5.0, 10.0, 10.5, 1e6, -1e6, 1e-30, NAN, INF, -INF]


def original_guard(loss: torch.Tensor, threshold: float) -> torch.Tensor:
    """The guard the plugin replaces, exactly as training scripts write it."""
    if loss > threshold:
        loss = loss * 0.0
    return loss


def leaf(value: float, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.tensor(value, dtype=dtype).requires_grad_(True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("value", TABLE)
def test_pass_mode_matches_the_original_guard_value_and_gradient(rules: str, value: float,
                                                                 dtype: torch.dtype) -> None:
    ours_in, theirs_in = leaf(value, dtype), leaf(value, dtype)
    ours = guard_loss(ours_in, THRESHOLD, "pass")
    theirs = original_guard(theirs_in, THRESHOLD)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0, equal_nan=True)
    assert torch.signbit(ours) == torch.signbit(theirs)

    torch.autograd.backward(ours)
    torch.autograd.backward(theirs)
    torch.testing.assert_close(ours_in.grad, theirs_in.grad, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize(("dtype", "threshold", "value"), [
    (torch.float32, 0.1, 0.1),  # the loss is float32(0.1), just above the float 0.1
    (torch.bfloat16, 10.05, 10.0625),  # 10.05 rounds up to bfloat16's 10.0625
    (torch.float16, 1e6, 65504.0),  # the threshold overflows float16: never above
    (torch.float16, 65504.5, 65504.0),
])
def test_the_threshold_is_compared_in_the_losss_dtype_like_the_original(
        rules: str, dtype: torch.dtype, threshold: float, value: float) -> None:
    ours, theirs = leaf(value, dtype), leaf(value, dtype)
    torch.testing.assert_close(guard_loss(ours, threshold, "pass"),
                               original_guard(theirs, threshold), rtol=0, atol=0)


def test_above_threshold_is_zero_with_zero_gradient_through_the_graph(rules: str) -> None:
    w = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    x = torch.tensor([4.0, 5.0, 6.0])
    used = guard_loss((w * x).sum(), THRESHOLD, "pass")  # 32 > 10
    assert used.item() == 0.0 and used.requires_grad
    torch.autograd.backward(used)
    assert w.grad is not None and w.grad.tolist() == [0.0, 0.0, 0.0]


def test_below_threshold_is_unchanged_with_its_gradient(rules: str) -> None:
    w = torch.tensor([0.5, 0.5], requires_grad=True)
    x = torch.tensor([2.0, 3.0])
    raw = (w * x).sum()  # 2.5
    used = guard_loss(raw, THRESHOLD, "pass")
    assert used.item() == 2.5
    torch.autograd.backward(used)
    assert w.grad is not None and w.grad.tolist() == [2.0, 3.0]


def test_pass_mode_lets_nan_through_and_turns_posinf_into_nan_like_inf_times_zero(
        rules: str) -> None:
    assert math.isnan(guard_loss(leaf(NAN), THRESHOLD, "pass").item())
    posinf = guard_loss(leaf(INF), THRESHOLD, "pass")
    assert math.isnan(posinf.item())
    assert math.isnan((torch.tensor(INF) * 0.0).item())
    assert guard_loss(leaf(-INF), THRESHOLD, "pass").item() == -INF


@pytest.mark.parametrize("value", [NAN, INF, -INF, 20.0])
def test_zero_mode_returns_zero_with_a_finite_zero_gradient(rules: str, value: float) -> None:
    raw = leaf(value)
    used = guard_loss(raw, THRESHOLD, "zero")
    assert used.item() == 0.0
    torch.autograd.backward(used)
    assert raw.grad is not None and raw.grad.item() == 0.0


def test_zero_mode_keeps_finite_losses_below_the_threshold(rules: str) -> None:
    raw = leaf(3.0)
    used = guard_loss(raw, THRESHOLD, "zero")
    torch.autograd.backward(used)
    assert (used.item(), raw.grad.item() if raw.grad is not None else None) == (3.0, 1.0)


@pytest.mark.parametrize("value", [NAN, INF, -INF])
def test_raise_mode_raises_on_nonfinite(rules: str, value: float) -> None:
    with pytest.raises(NonFiniteLossError, match="loss is not finite"):
        guard_loss(leaf(value), THRESHOLD, "raise")
    assert issubclass(NonFiniteLossError, FloatingPointError)


def test_raise_mode_guards_finite_losses_like_pass(rules: str) -> None:
    assert guard_loss(leaf(20.0), THRESHOLD, "raise").item() == 0.0
    assert guard_loss(leaf(2.0), THRESHOLD, "raise").item() == 2.0


# --------------------------------------------------------------------------- clip events

EVENTS = [
    # (raw, on_nonfinite, expected (action, reason) or None)
    (5.0, "pass", None), (10.0, "pass", None), (20.0, "pass", ("zeroed", "above_threshold")),
    (NAN, "pass", ("passed", "nan")), (INF, "pass", ("zeroed", "posinf")),
    (-INF, "pass", ("passed", "neginf")),
    (5.0, "zero", None), (20.0, "zero", ("zeroed", "above_threshold")),
    (NAN, "zero", ("zeroed", "nan")), (INF, "zero", ("zeroed", "posinf")),
    (-INF, "zero", ("zeroed", "neginf")),
    (5.0, "raise", None), (20.0, "raise", ("zeroed", "above_threshold")),
    (NAN, "raise", ("raised", "nan")), (INF, "raise", ("raised", "posinf")),
    (-INF, "raise", ("raised", "neginf")),
]


@pytest.mark.parametrize(("raw", "mode", "expected"), EVENTS)
def test_resolve_clip(raw: float, mode: Any, expected: tuple[str, str] | None) -> None:
    components = {"pts": 0.7 * raw, "n": 0.3}
    event = resolve_clip(raw, GuardSpec(THRESHOLD, mode), components)
    if expected is None:
        assert event is None
        return
    assert event is not None
    assert (event.action, event.reason) == expected
    assert event.threshold == THRESHOLD and event.components is components
    assert event.raw == raw or (math.isnan(event.raw) and math.isnan(raw))


def test_nan_threshold_never_fires_on_finite_losses(rules: str) -> None:
    assert resolve_clip(1e9, GuardSpec(NAN, "pass"), {}) is None
    assert guard_loss(leaf(1e9), NAN, "pass").item() == 1e9


# --------------------------------------------------------------------------- Monitor.clip_guard


@pytest.fixture
def offline(monitors: Callable[..., Monitor]) -> Monitor:
    return monitors("offline-run", None, spool=None)  # no server, no spool: nothing to do


def test_monitor_without_server_is_a_no_op_sender(offline: Monitor) -> None:
    offline.tensor("z", torch.randn(4))
    offline.log_step(0, loss=torch.tensor(1.0))
    assert offline.flush(0) is True
    assert offline.stats() == DeliveryStats()
    assert offline.close() == DeliveryStats()
    assert offline.close() == DeliveryStats()  # closing twice is harmless


@pytest.mark.parametrize("mode", ["pass", "zero", "raise"])
@pytest.mark.parametrize("value", [0.5, 10.0, 25.0, -3.0])
def test_monitor_clip_guard_returns_the_guarded_loss(rules: str, offline: Monitor, value: float,
                                                     mode: Any) -> None:
    w = torch.tensor(value, requires_grad=True)
    raw = w * 1.0
    used = offline.clip_guard(raw, THRESHOLD, {"a": raw * 0.5, "b": 2.0}, on_nonfinite=mode)
    expected = original_guard(torch.tensor(value), THRESHOLD)
    assert used.item() == expected.item()
    torch.autograd.backward(used)
    assert w.grad is not None and w.grad.item() == (0.0 if value > THRESHOLD else 1.0)
    offline.log_step(0)


def test_monitor_clip_guard_nonfinite_modes(rules: str, offline: Monitor) -> None:
    assert math.isnan(offline.clip_guard(torch.tensor(NAN), THRESHOLD).item())
    assert math.isnan(offline.clip_guard(torch.tensor(INF), THRESHOLD).item())
    assert offline.clip_guard(torch.tensor(INF), THRESHOLD, on_nonfinite="zero").item() == 0.0
    with pytest.raises(NonFiniteLossError):
        offline.clip_guard(torch.tensor(NAN), THRESHOLD, on_nonfinite="raise")
    offline.log_step(1)  # the monitor is still usable after the guard raised
    assert offline.times.calls == 5


def test_monitor_checks_its_inputs(offline: Monitor) -> None:
    with pytest.raises(TypeError, match="step must be an int"):
        offline.log_step(1.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="must be a single value"):
        offline.log_step(1, grad_norm=torch.ones(3))
    with pytest.raises(TypeError, match="must be a number or a 0-d tensor"):
        offline.log_step(1, scalars={"s": "high"})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="control characters"):
        offline.tensor("bad\nname", torch.ones(2))
