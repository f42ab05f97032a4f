"""The hub's fan-out and backpressure policy: publishing never waits, a slow viewer resyncs."""

from __future__ import annotations

from typing import Any

from trainvitals.server.live.hub import Hub, Viewer


def drain(viewer: Viewer) -> list[dict[str, Any]]:
    out = []
    while not viewer.queue.empty():
        out.append(viewer.queue.get_nowait())
    return out


def msg(i: int) -> dict[str, Any]:
    return {"type": "steps", "run": "r", "n": i}


async def test_a_viewer_that_never_reads_gets_exactly_one_resync() -> None:
    hub = Hub(queue_size=3)
    stuck, fast = hub.connect(), hub.connect()
    stuck.runs = fast.runs = {"r"}

    for i in range(100):  # stuck never reads; publishing returns every time regardless
        hub.publish("r", msg(i))
        assert drain(fast) == [msg(i)]  # the fast viewer loses nothing
        if i == 3:  # the first overflow: stuck's backlog was replaced by one resync
            assert stuck.resyncs == 1
            assert stuck.queue.qsize() == 1

    queued = drain(stuck)
    # When it finally reads: one resync, first, then only the newest updates after it.
    assert [m["type"] for m in queued].count("resync") == 1
    assert queued[0] == {"type": "resync"}
    assert queued[1:] == [msg(i) for i in range(100 - (len(queued) - 1), 100)]
    assert 1 <= len(queued) <= 3
    assert stuck.resyncs > 1 and fast.resyncs == 0


async def test_publish_reaches_only_viewers_that_follow_the_run() -> None:
    hub = Hub(queue_size=8)
    a, b, star, none = hub.connect(), hub.connect(), hub.connect(), hub.connect()
    a.runs, b.runs, star.runs = {"a"}, {"b", "c"}, {"*"}
    hub.publish("a", msg(1))
    hub.publish("c", msg(2))
    hub.publish(None, {"type": "alert"})  # None: every viewer

    assert drain(a) == [msg(1), {"type": "alert"}]
    assert drain(b) == [msg(2), {"type": "alert"}]
    assert drain(star) == [msg(1), msg(2), {"type": "alert"}]
    assert drain(none) == [{"type": "alert"}]
    assert len(hub) == 4
    hub.disconnect(a)
    hub.disconnect(a)  # twice is harmless
    hub.publish("a", msg(3))
    assert len(hub) == 3 and drain(a) == [] and drain(star) == [msg(3)]
