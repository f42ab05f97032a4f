"""The CPU's shortcuts (values read at once) record exactly what CUDA's rules record.

The plugin makes one device-dependent choice (``trainvitals.trainer_plugin.values.devices``): on the
CPU, where a read stalls nothing, it reads values at once — statistics with fewer passes, the
guard's ``if``, the watch's model-level check with a re-run of a bad step. Here the same
training, with NaN, Inf, a clip and a non-finite step, is recorded both ways into real spool
files, and the records must be the same.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from trainvitals import Monitor
from trainvitals.protocol import encode
from trainvitals.trainer_plugin.delivery.spool import read_records, spool_files
from trainvitals.trainer_plugin.values import devices
from trainvitals.trainer_plugin.values.devices import reads_now


def test_only_the_cpu_is_read_at_once() -> None:
    assert reads_now(torch.device("cpu"))
    for name in ("cuda", "cuda:1", "mps", "meta"):
        assert not reads_now(torch.device(name)), name


class Exp(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.exp(x)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
        self.drop = nn.Dropout(0.3)
        self.exp = Exp()

    def forward(self, x: torch.Tensor, scale: float = 1.0) -> dict[str, torch.Tensor]:
        raw = self.drop(self.body(x)) * scale
        return {"raw": raw, "depth": self.exp(raw)}


def train(spool: Path) -> list[dict[str, Any]]:
    """Eight steps: a clipped loss at step 1, a NaN input at step 3, an overflow in ``exp`` at
    step 6; the trainer skips updates with a non-finite gradient norm (as GradScaler does)."""
    torch.manual_seed(0)
    net = Net()
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    with Monitor("rules", server=None, spool=spool) as mon:
        mon.watch(net, name="net")
        mon.watch_optimizer(opt, net)
        for step in range(8):
            x = torch.randn(16, 4)
            if step == 3:
                x[2, 1] = math.nan
            out = net(x, scale=1000.0 if step == 6 else 1.0)
            mon.tensor("raw", out["raw"], feeds_exp=True)
            mon.tensor("depth", out["depth"].half())
            mon.tensor("ids", torch.arange(step + 1))
            parts = {"mean": out["depth"].mean(), "spread": out["raw"].std()}
            loss = mon.clip_guard(parts["mean"] + parts["spread"], 1.2 if step == 1 else 50.0,
                                  parts, on_nonfinite="zero")
            loss.backward()
            norm = torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            if bool(torch.isfinite(norm)):  # the test's trainer reads it, not the plugin
                opt.step()
            opt.zero_grad()
            mon.denominator("dist", out["raw"].abs().mean(dim=1), valid_count=(x > 0).sum(1))
            mon.log_step(step, grad_norm=norm, lr=0.05, scalars={"k": step})
    records = [json.loads(encode(r)) for files in spool_files(spool).values()
               for r in read_records(files)]
    for record in records:
        for key in ("time", "session", "pid", "versions"):
            record.pop(key, None)
    return records


def test_both_rules_record_the_same_steps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                          ) -> None:
    on_cpu = train(tmp_path / "cpu")
    monkeypatch.setattr(devices, "READ_NOW", frozenset())
    with_cuda_rules = train(tmp_path / "cuda")
    steps = [r for r in on_cpu if r["type"] == "step"]
    assert len(steps) == 8
    assert steps[1]["clip"]["reason"] == "above_threshold"
    assert (steps[3]["origin"]["stage"], steps[3]["tensors"]["raw"]["nan"] > 0) == ("input", True)
    assert (steps[6]["origin"]["module"], steps[6]["tensors"]["depth"]["posinf"] > 0) == (
        "net.exp", True)
    assert [bool(r.get("origin")) for r in steps] == [False] * 3 + [True] + [False] * 2 + [True,
                                                                                          False]
    assert on_cpu == with_cuda_rules
