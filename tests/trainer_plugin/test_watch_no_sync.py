"""``watch``, ``watch_optimizer`` and ``denominator`` never read a device value on the host.

Same detector as ``test_no_sync.py`` (loaded from it, so both stay one definition): a
``TorchFunctionMode`` on the training thread records host reads and host-to-device copies
while forward and backward run with every hook on, the optimizer steps, and ``log_step`` seals.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trainvitals import Monitor


def _no_sync_module() -> Any:
    spec = importlib.util.spec_from_file_location("tv_no_sync",
                                                  Path(__file__).with_name("test_no_sync.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


host_reads = _no_sync_module().host_reads


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.LayerNorm(8))
        self.frozen = nn.Linear(8, 8).requires_grad_(False)
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor, *, scale: float = 1.0) -> dict[str, Any]:
        h = self.frozen(self.body(x))
        return {"out": self.head(h) * scale, "aux": (h.mean(), torch.arange(3))}


def steps(mon: Monitor, net: Net, opt: torch.optim.Optimizer, count: int, nan_at: int) -> None:
    for step in range(count):
        x = torch.randn(5, 4)
        if step == nan_at:
            x[0, 0] = float("nan")  # the watch records it on the device, reads nothing
        out = net(x, scale=2.0)
        loss = out["out"].pow(2).mean()
        torch.autograd.backward(loss)
        opt.step()
        opt.zero_grad()
        mon.denominator("mean_dist", out["out"].abs().mean(dim=1),
                        valid_count=(x > 0).sum(dim=1))
        mon.log_step(step, loss=loss)


def test_watched_steps_never_read_values_on_the_host(
        monitors: Callable[..., Monitor], dead_url: str) -> None:
    torch.manual_seed(0)
    net = Net()
    # SGD: torch's own AdamW reads its step counter with .item() on the CPU (not on CUDA).
    opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=1e-3,
                          momentum=0.9, weight_decay=1e-2)
    # A sender (to a dead port): its thread reads values, the training thread must not.
    mon = monitors("watch-no-sync", dead_url, close_timeout=0.2)
    watch = mon.watch(net, op_trace=True)  # op_trace: the root's inputs and RNG are kept too
    mon.watch_optimizer(opt, net)
    with host_reads() as calls:
        steps(mon, net, opt, 4, nan_at=3)  # the last: its trace would read, by design
    assert calls == []
    assert len(watch.names) == 7 and watch._index == 4  # every step was sealed


def test_the_detector_sees_a_read_in_a_hook(monitors: Callable[..., Monitor]) -> None:
    # The control: a forward hook that reads a value is caught by the same detector.
    net = Net()
    net.head.register_forward_hook(lambda m, a, out: bool(torch.isfinite(out).all()))
    with host_reads() as calls:
        net(torch.randn(2, 4))
    assert calls == ["__bool__"]
