"""Acknowledged delivery against real servers: resends, failed commits, limits, drops.

Faults are real: a websocket proxy that swallows the server's acks and then cuts the
connection, a second SQLite connection that holds the database's write lock, server limits.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from websockets.sync.client import connect
from websockets.sync.server import Server, ServerConnection, serve

from trainvitals import Monitor
from trainvitals.protocol import Record, RunEnd, RunStart, Step
from trainvitals.server import ServerThread
from trainvitals.trainer_plugin.delivery.link import DeliveryStats, Link
from trainvitals.trainer_plugin.delivery.sender import Sender
from trainvitals.trainer_plugin.delivery.spool import (
    Spool,
    read_records,
    spool_files,
    stream_stem,
)

Rest = Callable[..., Any]
MakeMonitor = Callable[..., Monitor]


def stored_seqs(srv: ServerThread, run: str) -> list[int]:
    """Every (stream, seq) the server stored for ``run``, as seqs in order, duplicates kept."""
    with sqlite3.connect(srv.settings.db_path) as db:
        rows = db.execute("SELECT seen.seq FROM seen JOIN streams ON streams.id=seen.stream_id "
                          "JOIN runs ON runs.id=streams.run_id WHERE runs.name=? "
                          "ORDER BY seen.seq", (run,)).fetchall()
    db.close()
    return [seq for (seq,) in rows]


def run_row(rest: Rest, srv: ServerThread, name: str) -> dict[str, Any]:
    (row,) = [r for r in rest(srv, "/runs")["runs"] if r["name"] == name]
    return row  # type: ignore[no-any-return]


def loss_steps(rest: Rest, srv: ServerThread, run: str) -> list[int]:
    row = run_row(rest, srv, run)
    (data,) = rest(srv, f"/runs/{row['id']}/series", name="loss")["series"]
    return data["steps"]  # type: ignore[no-any-return]


def wait_for(condition: Callable[[], bool], what: str, polls: int = 600) -> None:
    """Poll (every 50 ms) until ``condition()``; a counter, not a clock, bounds it."""
    ready = threading.Event()
    for _ in range(polls):
        if condition():
            return
        ready.wait(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def train(mon: Monitor, steps: range) -> None:
    for i in steps:
        mon.tensor("w", torch.full((3,), float(i)))
        mon.log_step(i, loss=torch.tensor(float(i)), scalars={"i": i})


class AckEater:
    """A websocket proxy in front of a real server: while ``eat`` is set it forwards the
    trainer's frames but swallows every reply; ``cut()`` closes the trainer's connections."""

    def __init__(self, upstream: str) -> None:
        self.upstream, self.eat = upstream, True
        self.forwarded = 0
        self._clients: list[ServerConnection] = []
        self._server: Server = serve(self._handle, "127.0.0.1", 0)
        self.port = self._server.socket.getsockname()[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def _handle(self, client: ServerConnection) -> None:
        self._clients.append(client)
        assert client.request is not None
        auth = client.request.headers["Authorization"]
        with connect(self.upstream, additional_headers={"Authorization": auth},
                     proxy=None) as server:
            replies = threading.Thread(target=self._replies, args=(server, client), daemon=True)
            replies.start()
            for frame in client:
                server.send(frame)
                self.forwarded += 1

    def _replies(self, server: Any, client: ServerConnection) -> None:
        try:
            for reply in server:
                if not self.eat:
                    client.send(reply)
        except Exception:  # either side went away: the proxy's thread ends
            return

    def cut(self) -> None:
        for client in self._clients:
            client.close()

    def close(self) -> None:
        self._server.shutdown()


@pytest.fixture
def eater(server: ServerThread) -> Iterator[AckEater]:
    proxy = AckEater(f"{server.ws_url}/ws/ingest")
    yield proxy
    proxy.close()


def test_records_committed_but_not_acknowledged_are_resent_and_stored_once(
        server: ServerThread, eater: AckEater, monitors: MakeMonitor, rest: Rest) -> None:
    mon = monitors("eaten", f"ws://127.0.0.1:{eater.port}")
    stream = ("eaten", 0, mon.session)
    train(mon, range(30))
    wait_for(lambda: len(stored_seqs(server, "eaten")) == 31, "the server to commit 31")
    stats = mon.stats()
    assert (stats.sent, stats.resent, stats.acked, stats.pending) == (31, 0, {}, 31)

    eater.eat = False
    eater.cut()  # the connection dies with every ack lost on the way
    assert mon.flush(30), mon.stats()
    stats = mon.stats()
    assert stats.acked == {stream: 30} and stats.pending == 0
    assert stats.resent == 31  # everything unacknowledged went again ...
    assert stats.reconnects == 2
    assert stored_seqs(server, "eaten") == list(range(31))  # ... and is stored once
    assert loss_steps(rest, server, "eaten") == list(range(30))
    assert mon.close().acked == {stream: 31}


def test_a_failed_commit_is_answered_with_an_error_and_the_plugin_sends_again(
        server: ServerThread, monitors: MakeMonitor, rest: Rest,
        caplog: pytest.LogCaptureFixture) -> None:
    mon = monitors("locked", server.ws_url)
    stream = ("locked", 0, mon.session)
    train(mon, range(5))
    assert mon.flush(15)

    # Another connection holds SQLite's write lock: the server's commit fails after its busy
    # timeout (5 s), it answers with an `unavailable` error, and the plugin must try again.
    blocker = sqlite3.connect(server.settings.db_path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        train(mon, range(5, 10))
        wait_for(lambda: mon.stats().server_errors >= 1, "an error frame", polls=400)
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert mon.flush(30), mon.stats()

    stats = mon.stats()
    assert "server error unavailable" in stats.last_error
    assert "database is locked" in stats.last_error
    assert "nothing of it was stored" in stats.last_error
    assert stats.acked == {stream: 10} and stats.resent >= 1
    assert stored_seqs(server, "locked") == list(range(11))
    assert loss_steps(rest, server, "locked") == list(range(10))
    assert any("commit of" in r.getMessage() and "failed" in r.getMessage()
               for r in caplog.records if r.name == "trainvitals.server")


def test_a_server_limit_stops_delivery_and_keeps_the_records_for_sync(
        start_server: Callable[..., ServerThread], monitors: MakeMonitor, rest: Rest,
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    srv = start_server(max_runs=1)
    first = monitors("first", srv.ws_url)
    train(first, range(3))
    assert first.flush(15)
    second = monitors("second", srv.ws_url)
    train(second, range(3))
    wait_for(lambda: second.stats().server_errors >= 1, "the limit error")

    assert second.flush(0.5) is False
    stats = second.close(timeout=0.5)
    assert "limit_exceeded" in stats.last_error
    assert "at most 1 runs" in stats.last_error and "max_runs" in stats.last_error
    assert (stats.acked, stats.pending, stats.dropped) == ({}, 5, 0)
    assert [r["name"] for r in rest(srv, "/runs")["runs"]] == ["first"]
    assert "delivery stops, records stay in the spool" in caplog.text
    assert "send them with: trainvitals sync" in caplog.text
    assert any(second.session in stem for stem in spool_files(tmp_path / "spool"))


def test_a_record_over_a_smaller_server_limit_is_sent_without_its_maps(
        start_server: Callable[..., ServerThread], monitors: MakeMonitor, rest: Rest,
        caplog: pytest.LogCaptureFixture) -> None:
    srv = start_server(max_message_bytes=2048)
    mon = monitors("trimmed", srv.ws_url)
    stream = ("trimmed", 0, mon.session)
    mon.log_step(0, loss=1.0, scalars={"small": 1.0})
    mon.log_step(1, loss=2.0, scalars={f"scalar-{i:03d}-{'x' * 40}": float(i) for i in range(60)})
    mon.log_step(2, loss=3.0, scalars={"small": 3.0})
    assert mon.flush(15), mon.stats()

    assert mon.stats().acked == {stream: 3}  # the stream is complete ...
    assert loss_steps(rest, srv, "trimmed") == [0, 1, 2]
    row = run_row(rest, srv, "trimmed")
    names = {s["name"] for s in rest(srv, f"/runs/{row['id']}")["series"]}
    assert names == {"loss", "scalar/small"}  # ... and the oversized step lost only its maps
    assert "record 2 is larger than the server's limit of 2048 bytes" in caplog.text


class Blocked:
    """A Submittable whose values arrive only when the test says so (a slow device copy)."""

    def __init__(self, record: Record, gate: threading.Event) -> None:
        self.record, self.gate = record, gate

    def build(self) -> Record:
        self.gate.wait(30)
        return self.record


def test_records_dropped_from_a_full_queue_leave_no_gap(server: ServerThread, token: str,
                                                        tmp_path: Path) -> None:
    stream = ("drops", 0, "0123456789abcdef")
    sender = Sender(f"{server.ws_url}/ws/ingest", token, stream, spool_dir=tmp_path / "spool",
                    queue_size=2)
    gate = threading.Event()

    def step(n: int) -> Step:
        return Step(run="drops", session=stream[2], seq=n, step=n, loss=float(n))

    assert sender.submit(RunStart(run="drops", session=stream[2]))
    wait_for(lambda: sender._taken == 1, "the run start to be kept")  # spooled (maybe sent)
    assert sender.submit(Blocked(step(0), gate))  # the collector waits on this one
    wait_for(lambda: sender._queue.empty(), "the collector to take it")
    accepted = [sender.submit(step(n)) for n in range(1, 11)]
    assert accepted == [True, True] + [False] * 8  # the queue holds two; eight are dropped
    gate.set()
    assert sender.submit(RunEnd(run="drops", session=stream[2], seq=99, dropped=8))
    assert sender.flush(15), sender.stats()

    stats = sender.close(5)
    assert (stats.dropped, stats.pending) == (8, 0)
    assert stats.acked == {stream: 4}  # start, steps 0-2 and end, numbered without a gap
    assert stored_seqs(server, "drops") == [0, 1, 2, 3, 4]


class Unreadable:
    """A Submittable whose device values cannot be read."""

    def build(self) -> Record:
        raise RuntimeError("the device copy failed")


def test_the_collector_spools_a_burst_together_and_drops_only_what_fails(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    stream = ("burst", 0, "0123456789abcdef")
    sender = Sender(None, None, stream, spool_dir=tmp_path / "spool")  # offline: the spool only
    gate = threading.Event()

    def step(n: int) -> Step:
        return Step(run="burst", session=stream[2], seq=n, step=n, loss=float(n))

    assert sender.submit(Blocked(step(0), gate))  # holds the collector while the burst queues
    wait_for(lambda: sender._queue.empty(), "the collector to take it")
    assert all(sender.submit(item) for item in [step(1), Unreadable(), step(2),  # type: ignore[arg-type]
                                                Step(run="burst", session=stream[2], seq=0,
                                                     step=3, time=float("inf"))])
    gate.set()
    assert sender.flush(15)
    stats = sender.close(5)
    assert (stats.submitted, stats.dropped, stats.pending) == (5, 2, 3)
    (files,) = spool_files(tmp_path / "spool").values()
    kept = read_records(files)
    assert [(r.seq, r.step) for r in kept] == [(0, 0), (1, 1), (2, 2)]  # no gap in the seqs
    assert "could not read a step's values" in caplog.text
    assert "record the server would refuse" in caplog.text


def test_offline_mode_writes_the_spool_and_says_how_to_send_it(
        monitors: MakeMonitor, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    mon = monitors("offline", None)
    train(mon, range(4))
    assert mon.flush(5) is True  # offline, flushed means: everything is in the spool
    assert mon.times.offline_calls == mon.times.calls == 8
    stats = mon.close()
    assert (stats.sent, stats.pending, stats.dropped, stats.connected) == (0, 6, 0, False)

    (files,) = spool_files(tmp_path / "spool").values()
    kinds = [type(r).__name__ for r in read_records(files)]
    assert kinds == ["RunStart", "Step", "Step", "Step", "Step", "RunEnd"]
    (message,) = [r.getMessage() for r in caplog.records if "recorded offline" in r.getMessage()]
    assert f"6 record(s) of run 'offline' recorded offline are kept in {tmp_path / 'spool'}" \
        in message
    assert f"trainvitals sync {tmp_path / 'spool'} --server" in message
    assert caplog.records[-1].levelno == logging.WARNING


def test_an_idle_link_wakes_for_a_new_record_rather_than_at_its_next_poll(
        server: ServerThread, token: str, tmp_path: Path) -> None:
    # With a poll of an hour, a link that only polled would hold each record that long: the
    # flushes below can only succeed because spooling a record wakes the link.
    stream = ("wakes", 0, "0123456789abcdef")
    sender = Sender(f"{server.ws_url}/ws/ingest", token, stream, spool_dir=tmp_path / "spool",
                    idle_poll=3600)
    assert sender.submit(RunStart(run="wakes", session=stream[2]))
    assert sender.flush(30), sender.stats()
    for n in range(3):  # each record alone, after the link went idle again
        assert sender.submit(Step(run="wakes", session=stream[2], seq=n, step=n, loss=1.0))
        assert sender.flush(30), sender.stats()
    assert stored_seqs(server, "wakes") == [0, 1, 2, 3]
    sender.close(5)
    assert sender.link is not None
    sender._link_thread.join(5)  # close() woke the idle link: it did not wait for its poll
    assert not sender._link_thread.is_alive()


@pytest.mark.slow
def test_the_sender_reads_acks_while_it_lingers(start_server: Callable[..., ServerThread],
                                                 token: str) -> None:
    """Between two frames the sender waits its linger; the server's ack of the frame before
    must be taken during that wait, not after it (an ack read late holds the window, the
    spool's deletes and ``flush``). With a linger of a day, only reading during the wait can
    settle the stream."""
    srv = start_server()
    stream = ("lingering", 0, "0123456789abcdef")
    spool = Spool(None, stream_stem(*stream), max_bytes=1 << 20, max_record_bytes=1 << 20)
    stats, changed = DeliveryStats(), threading.Condition()
    link = Link(srv.ws_url + "/ws/ingest", token, spool, stream, stats, changed,
                linger=86_400.0)
    thread = threading.Thread(target=link.run, daemon=True)
    thread.start()
    try:
        spool.append(RunStart(run="lingering", session=stream[2], seq=0, time=1.0),
                     essential=True)
        with changed:
            changed.notify_all()
        with changed:
            settled = changed.wait_for(lambda: spool.pending == 0, timeout=60)
        assert settled, (stats.sent, stats.acked, stats.last_error)
        assert stats.sent == 1 and stats.acked == {stream: 0}
    finally:
        link.stop.set()
        thread.join(5)
