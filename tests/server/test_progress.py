"""Throttled progress for every viewer: unit tests on a hub with a hand-moved clock, and a real
server whose viewer, following no run, still learns every run's last step."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from websockets.sync.client import connect

from trainvitals.protocol import Batch, RunStart, Step, encode
from trainvitals.server import ServerThread
from trainvitals.server.live.hub import Hub
from trainvitals.server.live.progress import ProgressFeed

INGEST_TOKEN = "ingest-token-for-tests"  # tests/server/conftest.py


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def drain(queue: asyncio.Queue[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    while not queue.empty():
        out.append(queue.get_nowait())
    return out


def steps(*pairs: tuple[int, float]) -> list[dict[str, Any]]:
    return [{"rank": 0, "step": s, "time": t} for s, t in pairs]


def test_at_most_one_message_per_interval_with_the_latest_step_and_speed() -> None:
    hub, clock = Hub(), Clock()
    viewer = hub.connect()  # follows no run: progress is for everyone
    feed = ProgressFeed(hub, interval=1.0, clock=clock)
    feed.note("a", 7, steps((0, 50.0), (1, 50.5)))
    assert drain(viewer.queue) == [{"type": "progress", "run": "a", "run_id": 7, "last_step": 1,
                                    "time": 50.5, "steps_per_second": None}]
    clock.now += 0.5
    feed.note("a", 7, steps((2, 51.0), (3, 51.5)))
    assert drain(viewer.queue) == []  # within the interval, no event loop: held back
    clock.now += 0.6
    feed.note("a", 7, steps((5, 52.5)))
    (msg,) = drain(viewer.queue)
    assert (msg["last_step"], msg["steps_per_second"]) == (5, 2.0)  # 4 steps in 2 trainer-seconds
    feed.note("b", None, steps((9, 1.0)))  # runs are throttled apart
    assert [m["run"] for m in drain(viewer.queue)] == ["b"]


async def test_the_held_back_step_is_sent_after_the_interval() -> None:
    hub = Hub()
    viewer = hub.connect()
    feed = ProgressFeed(hub, interval=0.05)
    feed.note("a", 1, steps((0, 10.0)))
    feed.note("a", 1, steps((1, 10.1), (2, 10.2)))
    first = await asyncio.wait_for(viewer.queue.get(), 5)
    second = await asyncio.wait_for(viewer.queue.get(), 5)  # the trailing message
    assert (first["last_step"], second["last_step"]) == (0, 2)
    feed.close()


def test_a_viewer_following_nothing_gets_progress_of_every_run(start_server: Any) -> None:
    srv: ServerThread = start_server()
    with connect(f"{srv.ws_url}/ws/live", origin=f"http://127.0.0.1:{srv.port}",  # type: ignore[call-overload]
                 open_timeout=10, proxy=None) as live:
        live.send(json.dumps({"subscribe": []}))
        now = time.time()
        with connect(f"{srv.ws_url}/ws/ingest", additional_headers={
                "Authorization": f"Bearer {INGEST_TOKEN}"}, open_timeout=10, proxy=None) as ws:
            ws.send(encode(Batch((RunStart(run="other", session="s", time=now),
                                  *(Step(run="other", session="s", seq=i + 1, step=i,
                                         time=now + i, loss=1.0) for i in range(5))))))
            assert json.loads(ws.recv(timeout=10))["type"] == "ack"
        seen: list[dict[str, Any]] = []
        while not seen or seen[-1]["type"] != "progress":
            seen.append(json.loads(live.recv(timeout=10)))
    assert [m["type"] for m in seen] == ["run", "progress"]  # no steps: it follows no run
    assert (seen[-1]["run"], seen[-1]["last_step"]) == ("other", 4)
