"""``kill -9`` of a real ``trainvitals serve`` process in the middle of a run, then a restart.

The server is a subprocess on a fixed port and data directory; the trainer is a ``Monitor`` in
this process running real torch steps. Frames the killed server had received but never
committed are lost with it; the plugin must resend them, spool what it produces while the
server is gone, and deliver everything once the server is back — each step stored once — while
no training call waits on the network.
"""

from __future__ import annotations

import signal
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

from trainvitals import Monitor
from trainvitals.trainer_plugin.delivery.spool import spool_files

TOKEN = "kill9-ingest-token"
CALLS_PER_STEP = 3  # tensor, clip_guard, log_step


def train(mon: Monitor, steps: range) -> None:
    for i in steps:
        w = torch.full((4,), float(i), requires_grad=True)
        mon.tensor("w", w * 1.0)
        loss = mon.clip_guard((w * 1.0).mean(), 1e9)
        torch.autograd.backward(loss)
        mon.log_step(i, grad_norm=w.grad.norm() if w.grad is not None else None)


def stored(data: Path, session: str) -> list[int]:
    with sqlite3.connect(data / "trainvitals.sqlite3") as db:
        rows = db.execute("SELECT seen.seq FROM seen JOIN streams ON streams.id=seen.stream_id "
                          "WHERE streams.session=? ORDER BY seen.seq", (session,)).fetchall()
    db.close()
    return [seq for (seq,) in rows]


@pytest.mark.slow
def test_kill_9_mid_run_then_restart_every_step_exactly_once(
        serve: Callable[..., Any], wait_for: Callable[..., None], tmp_path: Path,
        record_property: Callable[[str, Any], None]) -> None:
    data, spool = tmp_path / "data", tmp_path / "spool"
    first = serve(data, tmp_path / "serve-1.log", token=TOKEN)
    port = first.port  # the restarted server takes the same port and data directory
    mon = Monitor("kill9", server=f"ws://127.0.0.1:{port}", token=TOKEN, spool=spool,
                  close_timeout=30)
    try:
        train(mon, range(20))
        assert mon.flush(30), mon.stats()

        # Frozen, the server still takes frames into its socket buffer but commits nothing:
        # these 20 steps are sent and never acknowledged when the server dies.
        first.signal(signal.SIGSTOP)
        train(mon, range(20, 40))
        wait_for(lambda: mon.stats().sent == 41, "steps 20-39 to be sent")
        first.kill9()
        wait_for(lambda: not mon.stats().connected, "the plugin to notice the dead server")

        before = mon.times.offline_calls
        train(mon, range(40, 60))  # no server at all
        outage_calls = mon.times.offline_calls - before
        assert outage_calls == 20 * CALLS_PER_STEP  # each ran, and returned, with no server
        # 20-39 unacknowledged, 40-59 only in the spool (once the collector has caught up)
        wait_for(lambda: mon.stats().pending == 40, "40 records kept in the spool")

        second = serve(data, tmp_path / "serve-2.log", token=TOKEN, port=port)
        train(mon, range(60, 80))
        assert mon.flush(60), mon.stats()
    finally:
        stats = mon.close()

    report = (f"Monitor.times: {mon.times.calls} calls, max {mon.times.max_s * 1e3:.2f} ms; "
              f"{outage_calls} calls while the server was dead, max "
              f"{mon.times.offline_max_s * 1e3:.2f} ms; resent {stats.resent} records")
    print(report)
    record_property("monitor_times", report)
    assert stats.resent >= 20
    assert (stats.dropped, stats.pending) == (0, 0)
    assert stats.acked == {("kill9", 0, mon.session): 81}
    assert stored(data, mon.session) == list(range(82))  # run_start, 80 steps, run_end: once

    runs = httpx.get(f"{second.url}/api/runs").json()["runs"]
    (run,) = [r for r in runs if r["name"] == "kill9"]
    assert (run["status"], run["steps"], run["last_step"], run["dropped"]) == (
        "finished", 80, 79, 0)
    series = httpx.get(f"{second.url}/api/runs/{run['id']}/series",
                       params={"name": ["loss", "tensor/w/max"]}).json()["series"]
    assert [s["steps"] for s in series] == [list(range(80))] * 2
    assert series[0]["values"] == [float(i) for i in range(80)]
    assert series[1]["values"] == [float(i) for i in range(80)]
    assert spool_files(spool) == {}  # everything delivered: nothing left behind
