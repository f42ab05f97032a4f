"""The single writer with its real parts: SQLite store, alert engine and hub, on an event loop."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from trainvitals.protocol import Ack, Record, RunStart, Step
from trainvitals.server import SQLiteStore
from trainvitals.server.alerts import AlertConfig, AlertEngine
from trainvitals.server.ingest.writer import Writer
from trainvitals.server.live.hub import Hub
from trainvitals.server.notify.sinks import BrowserSink


class Replies:
    """Collects what the writer hands back to one connection."""

    def __init__(self) -> None:
        self.acks: list[Ack] = []
        self.event = asyncio.Event()

    def __call__(self, acks: list[Ack]) -> None:
        self.acks.extend(acks)
        self.event.set()

    async def wait(self) -> list[Ack]:
        await asyncio.wait_for(self.event.wait(), 10)
        self.event.clear()
        return self.acks


@pytest.fixture
async def parts(tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    store = SQLiteStore(tmp_path / "tv.sqlite3")
    hub = Hub(64)
    writer = Writer(store, AlertEngine(AlertConfig()), hub, [BrowserSink(hub)])
    yield {"store": store, "hub": hub, "writer": writer}
    await writer.stop()


def records(run: str, session: str, first_step: int, n: int, seq0: int = 1) -> list[Record]:
    out: list[Record] = [RunStart(run=run, session=session)] if seq0 == 1 else []
    out += [Step(run=run, session=session, seq=seq0 + i, step=first_step + i, loss=float(i))
            for i in range(n)]
    return out


async def test_acks_after_commit_and_a_resend_is_acked_but_not_applied(parts: Any) -> None:
    writer, store, hub = parts["writer"], parts["store"], parts["hub"]
    viewer = hub.connect()
    viewer.runs = {"r"}
    await writer.start()
    batch = records("r", "s", 0, 3)

    first = Replies()
    await writer.submit(batch, first)
    assert await first.wait() == [Ack(run="r", session="s", seq=3)]
    again = Replies()
    await writer.submit(batch, again)
    assert await again.wait() == [Ack(run="r", session="s", seq=3)]

    assert writer.committed == 4
    (data,) = store.series(store.run_id("r"), "loss")
    assert data.steps == [0, 1, 2]
    kinds = []
    while not viewer.queue.empty():
        kinds.append(viewer.queue.get_nowait()["type"])
    assert kinds == ["run", "steps", "progress"]  # the resend published nothing


async def test_one_unstorable_frame_does_not_cost_the_frames_committed_with_it(parts: Any) -> None:
    writer, store = parts["writer"], parts["store"]
    bad, good = Replies(), Replies()
    # Queued before the writer starts, so its first transaction holds both jobs.
    unstorable = [RunStart(run="bad", session="b"),
                  Step(run="bad", session="b", seq=1, step=2**70, loss=1.0)]
    await writer.submit(unstorable, bad)
    await writer.submit(records("good", "g", 0, 2), good)
    await writer.start()

    assert await good.wait() == [Ack(run="good", session="g", seq=2)]
    assert bad.acks == []
    assert [r.name for r in store.runs()] == ["good"]
    (data,) = store.series(store.run_id("good"), "loss")
    assert (data.steps, data.values) == ([0, 1], [0.0, 1.0])


async def test_alerts_and_incidents_are_judged_saved_and_published(parts: Any) -> None:
    writer, store, hub = parts["writer"], parts["store"], parts["hub"]
    viewer = hub.connect()  # follows nothing: incidents and run changes still reach it
    follower = hub.connect()
    follower.runs.add("r")
    await writer.start()
    done = Replies()
    await writer.submit([RunStart(run="r", session="s"),
                         Step(run="r", session="s", seq=1, step=0, loss=math.nan)], done)
    await done.wait()

    (alert,) = store.alerts(state="open")
    assert (alert.rule, alert.series, alert.severity, alert.opened_step) == (
        "nonfinite", "loss", "critical", 0)
    messages = []
    while not viewer.queue.empty():
        messages.append(viewer.queue.get_nowait())
    assert [m["type"] for m in messages] == ["run", "progress", "incident"]
    messages.remove(messages[1])  # the runs list's throttled progress of the step
    assert messages[1]["change"] == "opened"
    assert messages[1]["incident"]["evidence"][0]["details"]["value"] == "NaN"
    (incident,) = store.incidents(run="r")
    assert (incident.number, incident.state, incident.onset_step) == (1, "open", 0)
    followed = [follower.queue.get_nowait()["type"] for _ in range(follower.queue.qsize())]
    assert "alert" in followed and "incident" in followed  # the run's viewers get the evidence


async def test_an_incident_engine_error_after_the_commit_is_not_a_failed_commit(
        parts: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The records are stored before their alerts are grouped into incidents: if grouping
    raises, the sender still gets its ack (not "nothing was stored"), the alerts are saved, and
    the error is counted — readiness does not turn to commits_failing."""
    writer, store = parts["writer"], parts["store"]

    def broken(step: Step, changes: Any) -> Any:
        raise OverflowError("a bug in the incident engine")

    monkeypatch.setattr(writer.incidents, "observe", broken)
    await writer.start()
    replies = Replies()
    batch = [*records("r", "s", 0, 2), Step(run="r", session="s", seq=3, step=2, loss=math.nan)]
    await writer.submit(batch, replies)
    assert await replies.wait() == [Ack(run="r", session="s", seq=3)]
    assert writer.failed_commits == 0 and writer.incident_errors == 3  # one per step
    assert [a.rule for a in store.alerts(run="r")] == ["nonfinite"]
