"""``kill -9`` of one of two ``trainvitals serve --database-url`` replicas mid-ingest.

A real ``Monitor`` streams to ``server="A,B"`` from a training thread that never pauses for
the servers. Replica B is frozen (SIGSTOP) while A is killed, so that for a moment nothing
else can acknowledge or store anything: at that moment every record A acknowledged must be in
the database. Then B is let go; the plugin fails over to it, resends what A never
acknowledged, and the run ends up holding every step exactly once.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
import torch

from trainvitals import Monitor

TOKEN = "replica-kill-ingest-token"
RUN = "replica-kill"


def wait_for(condition: Callable[[], bool], what: str, polls: int = 1200) -> None:
    """Poll every 50 ms until ``condition()``; bounded by a count, not asserted on time."""
    pause = threading.Event()
    for _ in range(polls):
        if condition():
            return
        pause.wait(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Replica:
    """``python -m trainvitals.cli serve --database-url URL`` on a port of its own."""

    def __init__(self, database_url: str, data: Path, log: Path) -> None:
        self.port, self.log = free_port(), log
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "trainvitals.cli", "serve", "--port", str(self.port),
                 "--database-url", database_url, "--data-dir", str(data),
                 "--ingest-token", TOKEN, "--no-log-alerts", "--log-level", "warning"],
                stdout=out, stderr=subprocess.STDOUT)
        wait_for(self._healthy, f"the replica on port {self.port} (log: {log})")

    def _healthy(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"replica exited: {self.log.read_text()}")
        try:
            return httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)  # a frozen one cannot act on SIGTERM
            self.proc.terminate()
            self.proc.wait(30)


@pytest.fixture
def replicas() -> Iterator[list[Replica]]:
    made: list[Replica] = []
    yield made
    for replica in made:
        replica.stop()


class Trainer(threading.Thread):
    """Real steps, one after another, until told to stop; counts them."""

    def __init__(self, mon: Monitor, first: int) -> None:
        super().__init__(name="trainer", daemon=True)
        self.mon, self.steps, self.halt = mon, first, threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            w = torch.full((4,), float(self.steps))
            self.mon.tensor("w", w)
            self.mon.log_step(self.steps, loss=w.mean())
            self.steps += 1
            self.halt.wait(0.002)  # a training step takes time; keeps ingest going meanwhile


def stored_seqs(database_url: str, session: str) -> list[int]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute("SELECT seen.seq FROM seen JOIN streams ON streams.id = "
                            "seen.stream_id WHERE streams.session = %s ORDER BY seen.seq",
                            (session,)).fetchall()
    return [int(seq) for (seq,) in rows]


@pytest.mark.slow
def test_a_replica_killed_mid_ingest_loses_nothing_acknowledged_and_b_takes_over(
        replicas: list[Replica], postgres_url: str, tmp_path: Path) -> None:
    a = Replica(postgres_url, tmp_path / "a", tmp_path / "a.log")
    replicas.append(a)
    b = Replica(postgres_url, tmp_path / "b", tmp_path / "b.log")
    replicas.append(b)
    mon = Monitor(RUN, server=f"{a.url},{b.url}", token=TOKEN, spool=tmp_path / "spool",
                  close_timeout=60)
    stream = (RUN, 0, mon.session)
    trainer = Trainer(mon, 0)
    try:
        trainer.start()
        wait_for(lambda: mon.stats().acked.get(stream, 0) >= 100, "A to acknowledge 100")
        assert mon.stats().server == f"ws://127.0.0.1:{a.port}/ws/ingest"

        b.proc.send_signal(signal.SIGSTOP)  # nobody but A can acknowledge anything now
        a.proc.kill()  # SIGKILL, mid-ingest: no shutdown, no final commit
        assert a.proc.wait(30) == -signal.SIGKILL
        wait_for(lambda: not mon.stats().connected, "the plugin to notice")
        acked = mon.stats().acked[stream]  # everything A acknowledged, acks in flight included
        assert stored_seqs(postgres_url, mon.session)[:acked + 1] == list(range(acked + 1))

        steps_at_kill = trainer.steps
        b.proc.send_signal(signal.SIGCONT)
        wait_for(lambda: trainer.steps >= steps_at_kill + 50, "more steps after the kill")
        trainer.halt.set()
        trainer.join(30)
        assert mon.flush(60), mon.stats()
        assert mon.stats().server == f"ws://127.0.0.1:{b.port}/ws/ingest"  # failed over
    finally:
        trainer.halt.set()
        stats = mon.close()

    steps = trainer.steps
    assert acked < steps  # the kill came mid-ingest: A had not acknowledged everything
    assert (stats.dropped, stats.pending) == (0, 0)
    assert stats.acked == {stream: steps + 1}  # run_start, the steps, run_end
    assert stored_seqs(postgres_url, mon.session) == list(range(steps + 2))

    runs = httpx.get(f"{b.url}/api/runs", timeout=10).json()["runs"]
    (run,) = [r for r in runs if r["name"] == RUN]
    assert (run["status"], run["steps"], run["last_step"]) == ("finished", steps, steps - 1)
    (loss,) = httpx.get(f"{b.url}/api/runs/{run['id']}/series", params={"name": "loss"},
                        timeout=10).json()["series"]
    assert loss["steps"] == list(range(steps))  # every step once, in order
    assert loss["values"] == [float(i) for i in range(steps)]
