"""The replica relay on a real PostgreSQL database: two hubs, two relays, one channel.

No store is needed: what one hub publishes must reach the other hub's viewers once, whole, in
order, and a lost connection must end in a ``resync`` for whoever may have missed messages.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest

from trainvitals.protocol.wire_json import wire_dumps
from trainvitals.server.live.hub import Hub, Viewer
from trainvitals.server.live.relay import ReplicaRelay

WAIT = 20.0  # seconds before a message that never comes fails the test
RESYNC = {"type": "resync"}


class Replica:
    """A hub with its relay and one viewer that follows every run."""

    def __init__(self, url: str, **options: Any) -> None:
        self.hub = Hub(queue_size=4096)
        self.relay = ReplicaRelay(url, self.hub, **options)
        self.viewer: Viewer = self.hub.connect()
        self.viewer.runs = {"*"}

    async def next(self) -> dict[str, Any]:
        return await asyncio.wait_for(self.viewer.queue.get(), WAIT)

    def queued(self) -> list[dict[str, Any]]:
        out = []
        while not self.viewer.queue.empty():
            out.append(self.viewer.queue.get_nowait())
        return out


@pytest.fixture
async def pair(postgres_url: str) -> AsyncIterator[tuple[Replica, Replica]]:
    a, b = Replica(postgres_url), Replica(postgres_url)
    await a.relay.start()
    await b.relay.start()
    yield a, b
    await a.relay.stop()
    await b.relay.stop()


def msg(n: int, run: str = "r") -> dict[str, Any]:
    return {"type": "steps", "run": run, "run_id": 1,
            "records": [{"rank": 0, "step": n, "time": 1.0, "values": {"loss": 0.5}, "clip": None}]}


async def terminate(url: str, relay: ReplicaRelay, role: str) -> None:
    """End the relay's ``role`` connection from the server side and wait until it is gone."""
    name = f"trainvitals relay {role} {relay.replica_id}"
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as admin:
        cur = await admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                  "WHERE application_name = %s", (name,))
        assert [row[0] for row in await cur.fetchall()] == [True]
        for _ in range(int(WAIT / 0.02)):
            cur = await admin.execute("SELECT count(*) FROM pg_stat_activity "
                                      "WHERE application_name = %s", (name,))
            if (await cur.fetchone()) == (0,):
                return
            await asyncio.sleep(0.02)
    raise AssertionError(f"{name} did not go away")


async def test_a_message_reaches_the_other_replica_once_and_is_never_echoed(
        pair: tuple[Replica, Replica]) -> None:
    a, b = pair
    a.hub.publish("r", msg(1))
    assert await b.next() == msg(1)
    # Ping-pong: PostgreSQL delivers notifications in commit order, so an echo of msg(1) to A
    # (or a re-notification of it by B) would reach A before B's answer does.
    b.hub.publish(None, {"type": "alert", "change": "opened", "n": 2})
    assert await a.next() == msg(1)  # A's own viewer got it locally, straight away
    assert await a.next() == {"type": "alert", "change": "opened", "n": 2}
    a.hub.publish("r", msg(3))
    assert await b.next() == {"type": "alert", "change": "opened", "n": 2}  # its own, locally
    assert await b.next() == msg(3)
    assert await a.next() == msg(3)
    assert a.queued() == [] and b.queued() == []
    assert (a.relay.stats.received, b.relay.stats.received) == (1, 2)


async def test_a_viewer_of_another_run_gets_nothing(pair: tuple[Replica, Replica]) -> None:
    a, b = pair
    other = b.hub.connect()
    other.runs = {"other"}
    a.hub.publish("r", msg(1))
    a.hub.publish("other", msg(2, "other"))
    assert await b.next() == msg(1)
    assert await b.next() == msg(2, "other")
    assert other.queue.get_nowait() == msg(2, "other") and other.queue.empty()


async def test_a_steps_message_over_the_payload_limit_arrives_whole(
        pair: tuple[Replica, Replica]) -> None:
    a, b = pair
    records: list[dict[str, Any]] = [
        {"rank": 0, "step": i, "time": 1.0e9 + i, "clip": None,
         "values": {f"tensor/m{k}/max": k + i / 10 for k in range(30 if i != 50 else 900)}
         | {"loss": math.nan if i % 9 == 0 else i}}
        for i in range(200)]  # ~180 kB, and step 50 alone is ~20 kB
    a.hub.publish("big", {"type": "steps", "run": "big", "run_id": 7, "records": records})

    received: list[dict[str, Any]] = []
    while len(received) < len(records):
        piece = await b.next()
        assert (piece["type"], piece["run"], piece["run_id"]) == ("steps", "big", 7)
        received.extend(piece["records"])
    assert received == json.loads(wire_dumps(records))  # in order, once, NaN as "NaN"
    assert b.queued() == []
    assert a.relay.stats.spilled >= 1


async def test_a_dropped_listen_connection_resyncs_local_viewers_and_recovers(
        postgres_url: str, pair: tuple[Replica, Replica]) -> None:
    a, b = pair
    await terminate(postgres_url, b.relay, "listen")
    assert await b.next() == RESYNC  # B may have missed messages: its pages reload
    assert b.relay.stats.reconnects == 1
    a.hub.publish("r", msg(1))
    assert await b.next() == msg(1)  # listening again


async def test_a_dropped_notify_connection_tells_the_others_to_resync(
        postgres_url: str, pair: tuple[Replica, Replica]) -> None:
    a, b = pair
    await terminate(postgres_url, a.relay, "notify")
    a.hub.publish("r", msg(1))  # its send fails: dropped, and B must hear so
    assert await b.next() == RESYNC
    assert a.relay.stats.dropped == 1
    a.hub.publish("r", msg(2))
    assert await b.next() == msg(2)
    assert b.queued() == []


async def test_a_full_outgoing_queue_drops_and_then_tells_the_others_to_resync(
        postgres_url: str) -> None:
    a, b = Replica(postgres_url, queue_size=2), Replica(postgres_url)
    await a.relay.start()
    await b.relay.start()
    try:
        for n in range(5):  # without yielding: the sender cannot take any before the third
            a.hub.publish("r", msg(n))
        assert a.relay.stats.dropped == 3
        assert [await b.next() for _ in range(3)] == [msg(0), msg(1), RESYNC]
        assert len(a.queued()) == 5  # A's own viewers lose nothing
    finally:
        await a.relay.stop()
        await b.relay.stop()


async def test_a_spilled_message_swept_before_it_was_read_resyncs_the_reader(
        postgres_url: str, pair: tuple[Replica, Replica]) -> None:
    # A trigger deletes every spilled row as it is written: the reader finds it gone, as it
    # would after falling spill_ttl behind, and its viewers must reload rather than miss it.
    a, b = pair
    async with await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as admin:
        await admin.execute(
            "CREATE FUNCTION sweep_at_once() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN DELETE FROM trainvitals_relay WHERE id = NEW.id; RETURN NULL; END $$")
        await admin.execute("CREATE TRIGGER sweep_at_once AFTER INSERT ON trainvitals_relay "
                            "FOR EACH ROW EXECUTE FUNCTION sweep_at_once()")
    record = {"rank": 0, "step": 0, "time": 1.0, "clip": None,
              "values": {f"tensor/m{k}/max": float(k) for k in range(2000)}}  # ~40 kB alone
    a.hub.publish("big", {"type": "steps", "run": "big", "run_id": 7, "records": [record]})
    assert await b.next() == RESYNC
    assert a.relay.stats.spilled == 1
    a.hub.publish("r", msg(2))
    assert await b.next() == msg(2)  # and it goes on relaying
