"""The demo's Accelerate trainer: the same trainer as ``train``, watched with one ``attach``.

``trainvitals demo`` runs ``train_accelerate``; these runs are shortened but keep the phases.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch

pytest.importorskip("accelerate")

from trainvitals import Monitor
from trainvitals.demo.accelerate_train import train_accelerate
from trainvitals.demo.train import DemoConfig, train
from trainvitals.server import ServerThread

pytestmark = pytest.mark.slow  # three short demo runs on the CPU

TINY = DemoConfig(steps=24, spike_step=12, num_batches=16)  # spikes after step 12, then stalls


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """One intra-op thread (tiny convs on a busy 2-core box; see tests/demo)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _same(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


def test_the_accelerate_trainer_is_the_same_trainer() -> None:
    """Same seeds, same numbers at every step: only the way it is watched differs."""
    config = dataclasses.replace(TINY, overflow=True)  # through the abort, too
    ours, theirs = train_accelerate(config), train(config)
    assert (ours.status, ours.steps_run) == (theirs.status, theirs.steps_run) == ("crashed", 14)
    assert len(ours.history) == len(theirs.history) == 14
    for mine, base in zip(ours.history, theirs.history, strict=True):
        assert mine.keys() == base.keys()
        assert all(_same(mine[k], base[k]) for k in base), (mine, base)


def _watched_run(server: ServerThread, token: str, tmp_path: Any, name: str,
                 config: DemoConfig) -> str:
    with Monitor(name, server=server.ws_url, token=token, spool=tmp_path / "spool",
                 config=dataclasses.asdict(config)) as monitor:
        result = train_accelerate(config, monitor)
        monitor.close(status=result.status, reason=result.reason)
    return result.status


def test_the_stall_shows_through_the_zero_edit_path(
        stall_server: ServerThread, token: str, told: Callable[..., Any], tmp_path: Any) -> None:
    assert _watched_run(stall_server, token, tmp_path, "demo-exp", TINY) == "finished"
    t = told(stall_server, "demo-exp", "loss", "loss_used", "grad_norm",
             "tensor/depth_raw/headroom", "scalar/update/head")
    spike, clip = TINY.spike_step, TINY.clip_loss
    assert sorted(t.series["loss"]) == list(range(TINY.steps))
    for step in range(TINY.steps):
        raw, used, grad = (t.series[n][step] for n in ("loss", "loss_used", "grad_norm"))
        if step <= spike:
            assert raw < clip and used == raw and grad > 0
        else:
            assert raw > clip and used == 0.0 and grad == 0.0
    assert [c["step"] for c in t.clips] == list(range(spike + 1, TINY.steps))
    assert all(80 < h < 89 for h in t.series["tensor/depth_raw/headroom"].values())
    rules = {(a["rule"], a["first_step"]) for a in t.alerts}
    assert ("stall", spike + 1) in rules and ("clip", spike + 1) in rules


def test_the_overflow_is_traced_to_where_it_starts(
        server: ServerThread, token: str, told: Callable[..., Any],
        rest: Callable[..., Any], tmp_path: Any) -> None:
    config = dataclasses.replace(TINY, overflow=True)
    assert _watched_run(server, token, tmp_path, "demo-overflow", config) == "crashed"
    t = told(server, "demo-overflow", "loss", "grad_norm", "tensor/depth_raw/headroom")
    bad = config.spike_step + 1
    assert sorted(t.series["loss"]) == list(range(bad + 1))  # the aborted step is reported
    assert not isinstance(t.series["loss"][bad], float)  # "NaN" or "Infinity"
    assert bad not in t.series["grad_norm"]  # no backward ran: nothing invented
    assert t.series["tensor/depth_raw/headroom"][bad] < 0  # past ln(float32 max)
    origins = rest(server, f"/runs/{t.run['id']}/origins")["origins"]
    # exp runs in PointMapNet.forward itself, not in a submodule: the model is named
    assert [(o["step"], o["stage"], o["kind"], o["module"], o["module_type"])
            for o in origins] == [(bad, "forward", "inf", "model", "PointMapNet")]
    assert t.run["status"] == "crashed"
