"""``kill -9`` of one of two ``trainvitals serve --database-url`` replicas mid-ingest.

A real ``Monitor`` streams to ``server="A,B"`` from a training thread that never pauses for
the servers. Replica B is frozen (SIGSTOP) while A is killed, so that for a moment nothing
else can acknowledge or store anything: at that moment every record A acknowledged must be in
the database. Then B is let go; the plugin fails over to it, resends what A never
acknowledged, and the run ends up holding every step exactly once.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import torch

from trainvitals import Monitor

TOKEN = "replica-kill-ingest-token"
RUN = "replica-kill"


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
        serve: Callable[..., Any], wait_for: Callable[..., None], postgres_url: str,
        tmp_path: Path) -> None:
    a, b = (serve(tmp_path / name, tmp_path / f"{name}.log", token=TOKEN,
                  args=["--database-url", postgres_url]) for name in "ab")
    mon = Monitor(RUN, server=f"{a.url},{b.url}", token=TOKEN, spool=tmp_path / "spool",
                  close_timeout=60)
    stream = (RUN, 0, mon.session)
    trainer = Trainer(mon, 0)
    try:
        trainer.start()
        wait_for(lambda: mon.stats().acked.get(stream, 0) >= 100, "A to acknowledge 100")
        assert mon.stats().server == f"ws://127.0.0.1:{a.port}/ws/ingest"

        b.signal(signal.SIGSTOP)  # nobody but A can acknowledge anything now
        a.kill9()  # mid-ingest: no shutdown, no final commit
        wait_for(lambda: not mon.stats().connected, "the plugin to notice")
        acked = mon.stats().acked[stream]  # everything A acknowledged, acks in flight included
        assert stored_seqs(postgres_url, mon.session)[:acked + 1] == list(range(acked + 1))

        steps_at_kill = trainer.steps
        b.signal(signal.SIGCONT)
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
