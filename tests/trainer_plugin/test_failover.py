"""Failover: ``server="A,B"`` tries the servers in order and moves on when one fails.

The servers are real. To share one store without PostgreSQL, the two servers of a test open
the same SQLite file (SQLite's own locking keeps that correct): whatever one acknowledged,
the other sees, as replicas on one PostgreSQL database do.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from trainvitals import Monitor
from trainvitals.server import ServerThread
from trainvitals.trainer_plugin.delivery.link import ingest_url, ingest_urls

MakeMonitor = Callable[..., Monitor]
StartServer = Callable[..., ServerThread]


def test_a_list_of_servers_becomes_a_list_of_ingest_urls_in_order() -> None:
    url = ingest_url("http://a:8000, https://b.example/,ws://c:1/ws/ingest,d:9")
    assert url is not None
    assert ingest_urls(url) == ["ws://a:8000/ws/ingest", "wss://b.example/ws/ingest",
                                "ws://c:1/ws/ingest", "ws://d:9/ws/ingest"]
    assert ingest_url("gpu-box:8765") == "ws://gpu-box:8765/ws/ingest"  # one: as before
    assert ingest_urls("ws://gpu-box:8765/ws/ingest") == ["ws://gpu-box:8765/ws/ingest"]


@pytest.mark.parametrize("server", ["a:1,,b:2", "a:1,", ",a:1", " , "])
def test_an_empty_entry_in_the_list_is_a_clear_error(server: str) -> None:
    with pytest.raises(ValueError, match="empty entry"):
        ingest_url(server)


def stored_seqs(db: Path, run: str) -> list[int]:
    """Every seq stored for ``run``, in order, duplicates kept."""
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT seen.seq FROM seen JOIN streams ON streams.id=seen.stream_id "
                            "JOIN runs ON runs.id=streams.run_id WHERE runs.name=? "
                            "ORDER BY seen.seq", (run,)).fetchall()
    conn.close()
    return [seq for (seq,) in rows]


def train(mon: Monitor, steps: range) -> None:
    for i in steps:
        mon.log_step(i, loss=torch.tensor(float(i)), scalars={"i": i})


def wait_for(condition: Callable[[], bool], what: str, polls: int = 600) -> None:
    """Poll (every 50 ms) until ``condition()``; a counter, not a clock, bounds it."""
    pause = threading.Event()
    for _ in range(polls):
        if condition():
            return
        pause.wait(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_server_that_refuses_connections_is_skipped(
        monitors: MakeMonitor, dead_url: str, server: ServerThread) -> None:
    mon = monitors("failover-connect", f"{dead_url},{server.http_url}")
    train(mon, range(20))
    assert mon.flush(30), mon.stats()
    assert mon.stats().server == f"{server.ws_url}/ws/ingest"
    assert stored_seqs(server.settings.db_path, "failover-connect") == list(range(21))


def test_a_lost_server_hands_over_to_the_next_and_back_round_again(
        monitors: MakeMonitor, start_server: StartServer) -> None:
    a, b = start_server(), start_server()  # one data_dir: the same SQLite file
    db, a_port = a.settings.db_path, a.port
    mon = monitors("failover-lost", f"{a.http_url},{b.http_url}")
    train(mon, range(0, 50))
    assert mon.flush(30), mon.stats()
    assert mon.stats().server == f"{a.ws_url}/ws/ingest"  # the first, while it lives

    a.stop()  # mid-stream: what A got but did not acknowledge is resent to B
    train(mon, range(50, 100))
    assert mon.flush(30), mon.stats()
    assert mon.stats().server == f"{b.ws_url}/ws/ingest"

    again = start_server(port=a_port)  # A is back; B goes: the link goes round to A
    b.stop()
    train(mon, range(100, 150))
    assert mon.flush(30), mon.stats()
    assert mon.stats().server == f"{again.ws_url}/ws/ingest"
    assert stored_seqs(db, "failover-lost") == list(range(151))  # each record once


def test_a_server_stopped_mid_stream_leaves_the_rest_to_the_next_each_record_once(
        monitors: MakeMonitor, start_server: StartServer) -> None:
    a, b = start_server(), start_server()
    mon = monitors("failover-midstream", f"{a.http_url},{b.http_url}")
    train(mon, range(0, 400))
    a.stop()  # while records are queued or in flight: the unacknowledged ones go to B again
    train(mon, range(400, 450))
    assert mon.flush(60), mon.stats()
    stats = mon.stats()
    assert stats.server == f"{b.ws_url}/ws/ingest" and stats.pending == 0
    assert stats.acked[("failover-midstream", 0, mon.session)] == 450
    assert stored_seqs(a.settings.db_path, "failover-midstream") == list(range(451))
