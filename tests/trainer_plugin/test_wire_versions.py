"""Protocol version 2 from the plugin to a real server, and version 1 to a server that reads
only that: the same training loop must leave exactly the same data, NaN and ±Inf included,
whichever version carried it."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
import torch

from trainvitals import Monitor
from trainvitals.server import ServerThread
from trainvitals.server.ingest import endpoint

Rest = Callable[..., Any]
MakeMonitor = Callable[..., Monitor]


def train(mon: Monitor, steps: int) -> None:
    """A loop whose values change shape: a scalar from step 3 on, an Inf at 4, a NaN loss
    through the clip guard at 5 (a clip event), a validation scalar every other step."""
    for i in range(steps):
        w = torch.full((3,), float(i))
        if i == 4:
            w[1] = math.inf
        mon.tensor("w", w)
        mon.tensor("z", torch.tensor([-math.inf, 1.0]) if i == 6 else torch.ones(2),
                   feeds_exp=True)
        loss = torch.tensor(math.nan if i == 5 else 1.0 / (i + 1))
        used = mon.clip_guard(loss, 10.0, components={"depth": loss * 2})
        scalars: dict[str, float] = {"warm": i} if i >= 3 else {}
        if i % 2:
            scalars["val/loss"] = -math.inf if i == 7 else 0.5 * i
        mon.log_step(i, loss=used, grad_norm=torch.tensor(0.25 * i), lr=1e-3,
                     scalars=scalars)


def everything(rest: Rest, srv: ServerThread, run_name: str) -> dict[str, Any]:
    (run,) = [r for r in rest(srv, "/runs")["runs"] if r["name"] == run_name]
    detail = rest(srv, f"/runs/{run['id']}")
    names = sorted(s["name"] for s in detail["series"])
    series = {n: rest(srv, f"/runs/{run['id']}/series", name=n)["series"] for n in names}
    clips = rest(srv, f"/runs/{run['id']}/clips")["clips"]
    return {"steps": run["steps"], "series": series, "clips": clips}


def delivered(monitors: MakeMonitor, srv: ServerThread, rest: Rest, name: str
              ) -> tuple[bool | None, dict[str, Any]]:
    mon = monitors(name, srv.ws_url)
    train(mon, 10)
    assert mon.flush(10)
    assert mon._sender is not None and mon._sender.link is not None
    binary = mon._sender.link.binary
    stats = mon.close()
    assert (stats.pending, stats.dropped) == (0, 0)
    return binary, everything(rest, srv, name)


@pytest.mark.slow
def test_v2_to_a_new_server_and_v1_to_an_old_one_leave_the_same_data(
        monitors: MakeMonitor, start_server: Callable[..., ServerThread], rest: Rest,
        monkeypatch: pytest.MonkeyPatch) -> None:
    srv = start_server()
    binary, by_v2 = delivered(monitors, srv, rest, "same")
    assert binary is True  # the server said it reads version 2, so that is what went

    srv.stop()
    monkeypatch.setattr(endpoint, "READS", b"1")  # a server from before version 2
    old = start_server(data_dir=srv.settings.data_dir.parent / "old")
    binary, by_v1 = delivered(monitors, old, rest, "same")
    assert binary is False

    assert by_v2 == by_v1
    assert by_v2["steps"] == 10
    series = {name: found[0] for name, found in by_v2["series"].items()}
    assert series["tensor/w/posinf"]["values"][4] == 1  # the Inf of step 4 was counted
    assert series["tensor/z/neginf"]["values"][6] == 1
    headroom = math.log(3.4028e38) - 1.0  # z.max is 1
    assert series["tensor/z/headroom"]["values"][0] == pytest.approx(headroom, 1e-4)
    assert series["loss"]["values"][5] == "NaN"  # the NaN loss is stored as itself
    assert series["scalar/val/loss"]["steps"] == [1, 3, 5, 7, 9]
    assert series["scalar/val/loss"]["values"][3] == "-Infinity"
    assert series["scalar/warm"]["steps"] == list(range(3, 10))
    assert [c["step"] for c in by_v2["clips"]] == [5]
