"""What the server promises a sender: acks mean "everything up to here is stored", failed
commits and limits are answered with error frames, and a refused frame stores nothing."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from typing import Any

import httpx
from websockets.sync.client import ClientConnection, connect

from trainvitals.protocol import Batch, Record, RunStart, Step, encode
from trainvitals.protocol.transport import MAX_MESSAGE_BYTES_HEADER
from trainvitals.server import ServerThread, Store
from trainvitals.server.store.limits import LimitExceeded, Limits
from trainvitals.server.store.sqlite.store import SQLiteStore

StartServer = Callable[..., ServerThread]


def ingest(srv: ServerThread, token: str) -> ClientConnection:
    ws: ClientConnection = connect(f"{srv.ws_url}/ws/ingest", proxy=None, open_timeout=10,
                                   additional_headers={"Authorization": f"Bearer {token}"})
    return ws


def frame(*records: Record) -> str:
    return encode(Batch(tuple(records)))


def step(seq: int, run: str = "r", session: str = "s", **kw: Any) -> Step:
    return Step(run=run, session=session, seq=seq, step=seq - 1, loss=float(seq), **kw)


def reply(ws: ClientConnection) -> dict[str, Any]:
    obj: dict[str, Any] = json.loads(ws.recv(timeout=15))
    return obj


def runs(srv: ServerThread) -> dict[str, dict[str, Any]]:
    return {r["name"]: r for r in httpx.get(f"{srv.http_url}/api/runs").json()["runs"]}


def test_an_ack_covers_only_what_is_stored_without_a_gap(server: ServerThread,
                                                         ingest_token: str) -> None:
    with ingest(server, ingest_token) as ws:
        ws.send(frame(RunStart(run="r", session="s"), step(1), step(3)))
        assert reply(ws) == {"v": 1, "type": "ack", "run": "r", "session": "s", "seq": 1,
                             "rank": 0}  # 3 is stored, but 2 is missing
        ws.send(frame(step(2)))
        assert reply(ws)["seq"] == 3  # the gap is filled: everything up to 3
        ws.send(frame(step(5, session="late")))  # no seq 0 of this stream: nothing to ack
        ws.send(frame(step(4)))
        assert reply(ws) == {"v": 1, "type": "ack", "run": "r", "session": "s", "seq": 4,
                             "rank": 0}
    assert runs(server)["r"]["steps"] == 5


def test_the_high_water_mark_is_rebuilt_from_storage(store_factory: Callable[[], Store]) -> None:
    first = store_factory()
    first.open()
    assert first.write([RunStart(run="r", session="s"), step(1), step(2), step(4)]).top_seq == {
        ("r", 0, "s"): 2}
    first.close()
    again = store_factory()
    again.open()
    try:  # a new process knows nothing in memory: the mark comes from what is stored
        assert again.write([step(3)]).top_seq == {("r", 0, "s"): 4}
        assert again.write([step(6)]).top_seq == {("r", 0, "s"): 4}
        assert again.write([step(1, session="other")]).top_seq == {}
    finally:
        again.close()


def test_the_handshake_states_the_frame_limit(start_server: StartServer,
                                              ingest_token: str) -> None:
    srv = start_server(max_message_bytes=5000)
    with ingest(srv, ingest_token) as ws:
        assert ws.response is not None
        assert ws.response.headers[MAX_MESSAGE_BYTES_HEADER] == "5000"


def test_a_failed_commit_gets_an_error_frame_and_stores_nothing(server: ServerThread,
                                                                ingest_token: str) -> None:
    records = (RunStart(run="locked", session="s"), step(1, run="locked"))
    blocker = sqlite3.connect(server.settings.db_path, isolation_level=None)
    with ingest(server, ingest_token) as ws:
        blocker.execute("BEGIN IMMEDIATE")  # holds the write lock past the busy timeout
        try:
            ws.send(frame(*records))
            error = reply(ws)
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        assert (error["type"], error["code"], error["fatal"]) == ("error", "unavailable", False)
        assert "database is locked" in error["message"]
        assert "nothing of it was stored; send it again later" in error["message"]
        assert "locked" not in runs(server)
        ws.send(frame(*records))  # what a sender does: send it again
        assert reply(ws)["seq"] == 1
    assert runs(server)["locked"]["steps"] == 1


def test_a_frame_past_a_limit_is_refused_whole_and_fatally(start_server: StartServer,
                                                           ingest_token: str) -> None:
    srv = start_server(max_runs=2, max_series_per_run=3)
    with ingest(srv, ingest_token) as ws:
        ws.send(frame(RunStart(run="a", session="s"), RunStart(run="b", session="s")))
        assert {reply(ws)["run"], reply(ws)["run"]} == {"a", "b"}
        # One more record of "a" and a first one of a third run: the whole frame is refused.
        ws.send(frame(step(1, run="a"), RunStart(run="c", session="s")))
        error = reply(ws)
        assert (error["code"], error["fatal"]) == ("limit_exceeded", True)
        assert error["message"] == ("cannot create run 'c': this server keeps at most 2 runs "
                                    "(setting max_runs)")
        assert runs(srv)["a"]["steps"] == 0  # not even the record of the allowed run

        ws.send(frame(step(1, run="a", scalars={"x": 1.0, "y": 2.0, "z": 3.0})))
        error = reply(ws)
        assert (error["code"], error["fatal"]) == ("limit_exceeded", True)
        assert "a run has at most 3 series (setting max_series_per_run)" in error["message"]
        ws.send(frame(step(1, run="a", scalars={"x": 1.0, "y": 2.0})))  # loss, x, y: fits
        assert reply(ws)["seq"] == 1
    assert sorted(runs(srv)) == ["a", "b"] and runs(srv)["a"]["steps"] == 1


def test_limits_are_checked_inside_the_transaction(tmp_path: Any) -> None:
    store = SQLiteStore(tmp_path / "tv.sqlite3", limits=Limits(max_runs=1))
    store.open()
    try:
        store.write([RunStart(run="a", session="s")])
        try:
            store.write([step(1, run="a"), RunStart(run="b", session="s")])
        except LimitExceeded as exc:
            assert exc.code == "limit_exceeded"
        else:
            raise AssertionError("the second run was accepted")
        assert [r.name for r in store.runs()] == ["a"] and store.runs()[0].steps == 0
        assert len(store.write([step(1, run="a")]).accepted) == 1  # caches were not poisoned
    finally:
        store.close()
