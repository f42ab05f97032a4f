"""The hot path never synchronises host and device (which on CUDA would stall the training).

Without a GPU, a ``TorchFunctionMode`` on the training thread records, while the Monitor's
per-step calls run, every call that reads a tensor's value on the host, and every call that
copies host data to a device (``torch.tensor(..., device=d)``, ``.to(d)``, ``.cuda()``: on
CUDA a blocking copy that waits for the whole stream). The code makes one device-dependent
choice — on the CPU, where a read stalls nothing, it reads values at once
(``trainvitals.trainer_plugin.values.devices``) — so the detector runs it under CUDA's rules: with
no device read at once, a call seen here with a CPU device is the same call with a CUDA device
on a GPU. ``test_devices.py`` shows that both rules record the same values.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import torch
from torch.overrides import TorchFunctionMode

from trainvitals import Monitor
from trainvitals.trainer_plugin.values import devices

HOST_READS = {
    torch.Tensor.item: "item", torch.Tensor.tolist: "tolist", torch.Tensor.cpu: "cpu",
    torch.Tensor.__bool__: "__bool__", torch.Tensor.__float__: "__float__",
    torch.Tensor.__int__: "__int__", torch.Tensor.__index__: "__index__",
    torch.Tensor.numpy: "numpy", torch.Tensor.__array__: "__array__",
}


FROM_HOST_DATA = {torch.tensor: "tensor", torch.as_tensor: "as_tensor"}
MOVES = {torch.Tensor.to: "to", torch.Tensor.cuda: "cuda", torch.Tensor.copy_: "copy_"}


def _names_a_device(args: Any, kwargs: dict[str, Any]) -> bool:
    return "device" in kwargs or any(isinstance(a, (torch.device, str)) for a in args)


class HostReads(TorchFunctionMode):
    """Records host reads and host-to-device copies made on this thread while active."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def __torch_function__(self, func: Any, types: Any, args: Any = (),
                           kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if func in HOST_READS:
            self.calls.append(HOST_READS[func])
        elif func in FROM_HOST_DATA and "device" in kwargs:
            self.calls.append(f"{FROM_HOST_DATA[func]}(device=...)")
        elif func is torch.Tensor.cuda or (func in MOVES and _names_a_device(args[1:], kwargs)):
            self.calls.append(f"{MOVES[func]}(device)")
        elif func is torch.Tensor.copy_ and args[0].device != args[1].device:
            self.calls.append("copy_(across devices)")
        return func(*args, **kwargs)


@contextmanager
def cuda_rules() -> Iterator[None]:
    """The plugin treats every device as it treats CUDA: no value is read at once."""
    saved = devices.READ_NOW
    devices.READ_NOW = frozenset()
    try:
        yield
    finally:
        devices.READ_NOW = saved


@contextmanager
def host_reads() -> Iterator[list[str]]:
    """The host reads made on this thread, with the plugin under CUDA's rules."""
    with cuda_rules(), HostReads() as mode:
        yield mode.calls


def one_step(mon: Monitor, step: int, on_nonfinite: Any) -> torch.Tensor:
    w = torch.randn(8, requires_grad=True)
    z = w * 3.0
    mon.tensor("z", z, feeds_exp=True)
    mon.tensor("ids", torch.arange(5))
    mon.tensor("half", z.detach().half())
    pts, n = (z ** 2).mean(), z.abs().mean()
    parts: dict[str, torch.Tensor | float] = {"pts": pts, "n": n, "const": 0.5}
    raw = pts + n
    used = mon.clip_guard(raw, 10.0, parts, on_nonfinite=on_nonfinite)
    mon.log_step(step, grad_norm=w.detach().norm(), grad_norm_post=torch.tensor(1.0),
                 lr=torch.tensor(1e-3, dtype=torch.float64), scalars={"temp": z.max(), "k": 3},
                 components={"extra": torch.tensor(2.0)})
    return used


def test_the_detector_sees_host_reads_and_host_to_device_copies() -> None:
    t = torch.tensor([1.5])
    with host_reads() as calls:
        t.item()
        t.tolist()
        bool(t > 0)
        float(t)
        t.cpu()
        torch.tensor(float("inf"), device=t.device)
        torch.zeros(2).to(t.device)
        torch.zeros(2).to(torch.float64)  # a dtype change is not a move
        torch.where(t > 0, t, float("inf"))  # a Python scalar is a kernel argument
    assert calls == ["item", "tolist", "__bool__", "__float__", "cpu", "tensor(device=...)",
                     "to(device)"]


def test_under_cpu_rules_the_same_calls_read_values_at_once(
        monitors: Callable[..., Monitor]) -> None:
    # The control for the rule switch: without it, the CPU shortcut reads (free on a CPU).
    mon = monitors("cpu-rules", None)
    with HostReads() as mode:
        one_step(mon, 0, "pass")
    assert "item" in mode.calls


@pytest.mark.parametrize("on_nonfinite", ["pass", "zero"])
def test_per_step_calls_never_read_values_on_the_host(
        monitors: Callable[..., Monitor], on_nonfinite: str) -> None:
    mon = monitors("no-sync", None)
    with host_reads() as calls:
        for step in range(3):
            one_step(mon, step, on_nonfinite)
    assert calls == []
    assert mon.times.calls == 3 * 5


def test_per_step_calls_with_a_sender_never_read_values_on_the_host(
        monitors: Callable[..., Monitor], dead_url: str) -> None:
    # The sender thread reads values (that is its job); the mode only watches this thread.
    mon = monitors("no-sync-sender", dead_url, close_timeout=0.2)
    with host_reads() as calls:
        for step in range(3):
            one_step(mon, step, "pass")
    assert calls == []


def test_raise_mode_reads_the_loss_on_the_host_by_design(monitors: Callable[..., Monitor]) -> None:
    mon = monitors("sync-on-raise", None)
    with host_reads() as calls:
        mon.clip_guard(torch.tensor(2.0), 10.0, on_nonfinite="raise")
    assert calls == ["__bool__"]
