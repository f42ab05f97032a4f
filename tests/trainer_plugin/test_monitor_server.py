"""Monitor and sender against real servers: delivery, acks, run ends, and bad networks.

Nothing of ours is mocked: a real uvicorn server on a free port with SQLite in a temporary
directory, or a port where nothing listens, or one that accepts and never answers.
"""

from __future__ import annotations

import math
import socket
import threading
from collections.abc import Callable
from typing import Any

import pytest
import torch

from trainvitals import Monitor
from trainvitals.server import ServerThread

Rest = Callable[..., Any]
MakeMonitor = Callable[..., Monitor]


def run_row(rest: Rest, srv: ServerThread, name: str) -> dict[str, Any]:
    rows: list[dict[str, Any]] = [r for r in rest(srv, "/runs")["runs"] if r["name"] == name]
    (row,) = rows
    return row


def series(rest: Rest, srv: ServerThread, run: str, name: str) -> tuple[list[int], list[Any]]:
    row = run_row(rest, srv, run)
    (data,) = rest(srv, f"/runs/{row['id']}/series", name=name)["series"]
    return data["steps"], data["values"]


def train(mon: Monitor, steps: range, *, threshold: float = 10.0) -> None:
    """A small loop using every per-step call; the raw loss is ``step`` (clipped above 10)."""
    for i in steps:
        w = torch.full((4,), float(i), requires_grad=True)
        z = w * 1.0
        mon.tensor("z", z, feeds_exp=True)
        raw = z.mean()
        used = mon.clip_guard(raw, threshold, {"main": raw * 0.75, "aux": raw * 0.25})
        torch.autograd.backward(used)
        mon.log_step(i, grad_norm=w.grad.norm() if w.grad is not None else None, lr=0.01)


def test_every_step_arrives_exactly_once_and_close_finishes_the_run(
        server: ServerThread, monitors: MakeMonitor, rest: Rest) -> None:
    mon = monitors("exact", server.ws_url, config={"lr": 0.01, "model": "mlp"})
    stream = ("exact", 0, mon.session)
    train(mon, range(40))

    assert mon.flush(15) is True
    stats = mon.stats()
    assert (stats.submitted, stats.sent, stats.dropped, stats.server_errors) == (41, 41, 0, 0)
    assert stats.acked == {stream: 40}
    assert stats.connected and stats.last_error == ""

    steps, losses = series(rest, server, "exact", "loss")
    assert steps == list(range(40))
    assert losses == [float(i) for i in range(40)]
    _, used = series(rest, server, "exact", "loss_used")
    assert used == [float(i) if i <= 10 else 0.0 for i in range(40)]
    _, grads = series(rest, server, "exact", "grad_norm")
    assert grads == [pytest.approx(0.5 if i <= 10 else 0.0) for i in range(40)]
    _, headroom = series(rest, server, "exact", "tensor/z/headroom")
    assert headroom == [pytest.approx(88.7228390520 - i) for i in range(40)]
    _, main = series(rest, server, "exact", "loss/main")
    assert main == [pytest.approx(0.75 * i) for i in range(40)]
    row = run_row(rest, server, "exact")
    assert (row["status"], row["steps"], row["last_step"]) == ("running", 40, 39)
    assert row["config"] == {"lr": 0.01, "model": "mlp"}
    clips = rest(server, f"/runs/{row['id']}/clips")["clips"]
    assert [c["step"] for c in clips] == list(range(11, 40))
    assert clips[0] == {"rank": 0, "step": 11, "raw": 11.0, "threshold": 10.0,
                        "action": "zeroed", "reason": "above_threshold",
                        "components": {"main": 8.25, "aux": 2.75}}

    closed = mon.close()
    assert closed.acked == {stream: 41} and closed.dropped == 0
    row = run_row(rest, server, "exact")
    assert (row["status"], row["reason"], row["dropped"]) == ("finished", "", 0)


def test_nonfinite_losses_and_tensors_arrive_as_such(
        server: ServerThread, monitors: MakeMonitor, rest: Rest) -> None:
    mon = monitors("nonfinite", server.ws_url)
    values = [1.0, math.nan, math.inf, -math.inf, 2.0]
    for i, v in enumerate(values):
        mon.tensor("z", torch.tensor([v, 1.0]))
        mon.clip_guard(torch.tensor(v), 10.0)
        mon.log_step(i)
    assert mon.flush(15)

    _, raw = series(rest, server, "nonfinite", "loss")
    assert raw == [1.0, "NaN", "Infinity", "-Infinity", 2.0]
    _, used = series(rest, server, "nonfinite", "loss_used")
    assert used == [1.0, "NaN", "NaN", "-Infinity", 2.0]  # +Inf * 0.0 is NaN, as before
    _, nan_counts = series(rest, server, "nonfinite", "tensor/z/nan")
    assert nan_counts == [0.0, 1.0, 0.0, 0.0, 0.0]
    row = run_row(rest, server, "nonfinite")
    clips = rest(server, f"/runs/{row['id']}/clips")["clips"]
    assert [(c["step"], c["raw"], c["reason"]) for c in clips] == [
        (1, "NaN", "nan"), (2, "Infinity", "posinf"), (3, "-Infinity", "neginf")]
    assert row["open_alerts"].get("critical", 0) >= 1


def test_exception_in_with_block_marks_the_run_crashed(
        server: ServerThread, token: str, rest: Rest) -> None:
    with pytest.raises(RuntimeError, match="boom"), \
            Monitor("crashing", server=server.ws_url, token=token) as mon:
        train(mon, range(3))
        raise RuntimeError("boom at step 3")
    row = run_row(rest, server, "crashing")
    assert (row["status"], row["reason"], row["steps"]) == (
        "crashed", "RuntimeError: boom at step 3", 3)


def test_with_block_without_exception_finishes_the_run(
        server: ServerThread, token: str, rest: Rest) -> None:
    with Monitor("clean", server=server.ws_url, token=token) as mon:
        train(mon, range(2))
    assert run_row(rest, server, "clean")["status"] == "finished"


def test_ranks_report_to_the_same_run(server: ServerThread, monitors: MakeMonitor,
                                      rest: Rest) -> None:
    ranks = [monitors("ddp", server.ws_url, rank=r, world_size=2) for r in (0, 1)]
    for mon in ranks:
        train(mon, range(3))
    for mon in ranks:
        mon.close()
    row = run_row(rest, server, "ddp")
    assert (row["ranks"], row["world_size"], row["steps"], row["status"]) == (
        [0, 1], 2, 6, "finished")


def test_wrong_token_is_reported_not_raised(server: ServerThread, monitors: MakeMonitor,
                                            rest: Rest) -> None:
    mon = monitors("refused", server.ws_url, token="not-the-right-token")
    train(mon, range(3))
    assert mon.flush(0.5) is False
    stats = mon.close(timeout=0.2)
    assert "HTTP 401" in stats.last_error and "check the token" in stats.last_error
    # Nothing is lost: run_start and 3 steps stay in the spool (run_end too) for a later sync.
    assert (stats.sent, stats.acked, stats.dropped, stats.pending) == (0, {}, 0, 5)
    assert rest(server, "/runs")["runs"] == []


# --------------------------------------------------------------------------- bad networks


def test_unreachable_server_spools_everything_and_never_raises(
        dead_url: str, monitors: MakeMonitor) -> None:
    mon = monitors("unreachable", dead_url)
    train(mon, range(20))  # would raise here if anything reached the loop
    assert mon.times.calls == 20 * 3
    assert mon.flush(0.2) is False

    stats = mon.close(timeout=0.2)
    # run_start + 20 steps + run_end: none delivered, none lost — all kept in the spool.
    assert (stats.sent, stats.acked, stats.dropped, stats.pending) == (0, {}, 0, 22)
    assert "cannot connect" in stats.last_error
    assert not stats.connected


def test_server_that_never_answers_does_not_block_the_loop(
        silent_listener: socket.socket, monitors: MakeMonitor) -> None:
    before = set(threading.enumerate())
    silent_url = f"ws://127.0.0.1:{silent_listener.getsockname()[1]}"
    mon = monitors("silent", silent_url)
    (sender,) = [t for t in threading.enumerate()
                 if t not in before and t.name == "trainvitals-sender"]
    train(mon, range(30))
    assert mon.times.calls == 30 * 3  # every call returned, none raised
    assert mon.times.max_s < 5.0  # far below the 5 s the handshake may hang (loose bound)

    stats = mon.close(timeout=0.2)
    # The collector never waits on the network: everything went to the spool, nothing lost.
    assert (stats.sent, stats.acked, stats.dropped, stats.pending) == (0, {}, 0, 32)
    # Once the handshake fails (here: the listener goes away), the sender thread sees its
    # stop signal and ends: no thread is left behind.
    silent_listener.close()
    sender.join(15)
    assert not sender.is_alive()
    assert (mon.stats().dropped, mon.stats().pending) == (0, 32)


def test_sender_reconnects_after_the_server_restarts(
        start_server: Callable[..., ServerThread], monitors: MakeMonitor, rest: Rest) -> None:
    first = start_server()
    port = first.port
    mon = monitors("restarted", first.ws_url)
    stream = ("restarted", 0, mon.session)
    train(mon, range(10))
    assert mon.flush(15) is True
    assert mon.stats().acked == {stream: 10}

    first.stop()
    train(mon, range(10, 20))  # may be lost: the server is down
    second = start_server(port=port)  # same port, same data directory
    train(mon, range(20, 30))
    assert mon.flush(30) is True

    stats = mon.stats()
    assert stats.reconnects >= 2
    assert stats.acked == {stream: 30}
    steps, losses = series(rest, second, "restarted", "loss")
    assert set(range(10)) <= set(steps) and set(range(20, 30)) <= set(steps)
    assert steps == sorted(set(steps)) and set(steps) <= set(range(30))
    assert losses == [float(s) for s in steps]
    row = run_row(rest, second, "restarted")
    assert row["steps"] == len(steps)

    mon.close()
    assert run_row(rest, second, "restarted")["status"] == "finished"


def test_a_trainer_that_raises_mid_step_still_sends_what_that_step_staged(
        server: ServerThread, monitors: MakeMonitor, rest: Rest) -> None:
    """The original trainer aborts at a NaN loss before it logs the step: close() ends that
    step with what was staged (the tensor that went NaN, the guard's event)."""
    mon = monitors("aborts-mid-step", server.ws_url)
    for step in range(3):
        mon.tensor("depth", torch.ones(4))
        mon.clip_guard(torch.tensor(1.0), threshold=10.0)
        mon.log_step(step)
    mon.tensor("depth", torch.tensor([1.0, float("nan")]))
    mon.clip_guard(torch.tensor(float("nan")), threshold=10.0)
    mon.close(status="crashed", reason="non-finite loss")  # no log_step for step 3
    rid = next(r["id"] for r in rest(server, "/runs")["runs"] if r["name"] == "aborts-mid-step")
    nan = rest(server, f"/runs/{rid}/series", name="tensor/depth/nan")["series"][0]
    assert (nan["steps"], nan["values"]) == ([0, 1, 2, 3], [0.0, 0.0, 0.0, 1.0])
    (clip,) = [c for c in rest(server, f"/runs/{rid}/clips")["clips"] if c["reason"] == "nan"]
    assert clip["step"] == 3
