"""The trainer-facing websocket over a real server: acks, error frames, tokens, origins."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import ClientConnection, connect

from trainvitals.protocol import Ack, Batch, Record, RunStart, Step, encode
from trainvitals.server import ServerThread, Settings

TOKEN = "ingest-token-for-ingest-tests"
LIMIT = 2048  # max_message_bytes of the shared server


def ingest(srv: ServerThread, token: str | None = TOKEN, *, query: str = "",
           **kw: Any) -> ClientConnection:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else None
    ws: ClientConnection = connect(f"{srv.ws_url}/ws/ingest{query}", additional_headers=headers,
                                   open_timeout=10, proxy=None, **kw)
    return ws


def batch(*records: Record) -> str:
    return encode(Batch(tuple(records)))


def steps(run: str, n: int, session: str = "s") -> list[Record]:
    start: list[Record] = [RunStart(run=run, session=session, time=1.0)]
    return start + [
        Step(run=run, session=session, seq=i + 1, step=i, time=2.0 + i, loss=float(i))
        for i in range(n)]


def reply(ws: ClientConnection) -> dict[str, Any]:
    obj: dict[str, Any] = json.loads(ws.recv(timeout=10))
    return obj


def ack(run: str, seq: int, session: str = "s") -> dict[str, Any]:
    obj: dict[str, Any] = json.loads(encode(Ack(run=run, session=session, seq=seq)))
    return obj


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    settings = Settings(port=0, data_dir=tmp_path_factory.mktemp("ingest"), ingest_token=TOKEN,
                        max_message_bytes=LIMIT, log_alerts=False)
    with ServerThread(settings) as server:
        yield server


def run_names(srv: ServerThread) -> set[str]:
    return {r["name"] for r in httpx.get(f"{srv.http_url}/api/runs").json()["runs"]}


# --------------------------------------------------------------------------- valid frames


def test_valid_batch_is_acked_and_queryable(srv: ServerThread) -> None:
    with ingest(srv) as ws:
        ws.send(batch(*steps("valid", 3)))
        assert reply(ws) == ack("valid", 3)
        ws.send(batch(Step(run="valid", session="s", seq=4, step=3, loss=9.5)))
        assert reply(ws) == ack("valid", 4)

    runs = {r["name"]: r for r in httpx.get(f"{srv.http_url}/api/runs").json()["runs"]}
    run = runs["valid"]
    assert (run["status"], run["steps"], run["last_step"]) == ("running", 4, 3)
    body = httpx.get(f"{srv.http_url}/api/runs/{run['id']}/series",
                     params={"name": "loss"}).json()
    assert body["series"] == [{"name": "loss", "rank": 0, "steps": [0, 1, 2, 3],
                               "values": [0.0, 1.0, 2.0, 9.5]}]


def test_single_record_frames_and_binary_frames_are_accepted(srv: ServerThread) -> None:
    with ingest(srv) as ws:
        ws.send(encode(RunStart(run="single", session="s")))
        assert reply(ws) == ack("single", 0)
        ws.send(encode(Step(run="single", session="s", seq=1, step=0, loss=1.0)).encode())
        assert reply(ws) == ack("single", 1)


def test_resent_batch_is_acked_again_and_stored_once(srv: ServerThread) -> None:
    with ingest(srv) as ws:
        ws.send(batch(*steps("resent", 2)))
        assert reply(ws) == ack("resent", 2)
    with ingest(srv) as ws:  # a reconnecting sender resends what it has no ack for
        ws.send(batch(*steps("resent", 2)))
        assert reply(ws) == ack("resent", 2)
    (run,) = [r for r in httpx.get(f"{srv.http_url}/api/runs").json()["runs"]
              if r["name"] == "resent"]
    assert run["steps"] == 2


# --------------------------------------------------------------------------- bad frames

def _in_batch(record: Record) -> dict[str, Any]:
    """A record as it sits inside a batch frame: its own frame without ``v``."""
    return {k: v for k, v in json.loads(encode(record)).items() if k != "v"}


_POISON = steps("poison", 1)
_VALID_STEP = json.loads(encode(_POISON[1]))
_TOO_BIG = batch(RunStart(run="poison", session="s", config={"blob": "x" * (2 * LIMIT)}))
assert LIMIT < len(_TOO_BIG) < 4 * LIMIT  # ours to refuse, below uvicorn's own limit

BAD_FRAMES: dict[str, tuple[str | bytes, str, str]] = {
    # name: (frame, error code, part of the message)
    "not json": ("{not json", "malformed", "not valid JSON"),
    "truncated": (batch(*_POISON)[:-9], "malformed", "not valid JSON"),
    "not utf-8": (b"\xff\xfe\x00{", "malformed", "not valid JSON"),
    "bare NaN token": ('{"v":1,"type":"step","run":"poison","session":"s","seq":1,"step":0,'
                       '"loss":NaN}', "malformed", "bare NaN"),
    "not an object": ("[1, 2]", "malformed", "must be a JSON object"),
    "unknown version": (json.dumps({**_VALID_STEP, "v": 2}), "unsupported_version",
                        "unsupported protocol version 2"),
    "no version": (json.dumps({k: v for k, v in _VALID_STEP.items() if k != "v"}),
                   "unsupported_version", "unsupported protocol version None"),
    "unknown type": (json.dumps({"v": 1, "type": "hello"}), "invalid", "unknown message type"),
    "wrong type: step as string": (json.dumps({**_VALID_STEP, "step": "0"}), "invalid",
                                   "'step' must be an integer"),
    "wrong type: loss as bool": (json.dumps({**_VALID_STEP, "loss": True}), "invalid",
                                 "'loss' expected a number, got a boolean"),
    "missing field": (json.dumps({k: v for k, v in _VALID_STEP.items() if k != "seq"}),
                      "invalid", "'seq' is required"),
    "batch with one bad record": (
        json.dumps({"v": 1, "type": "batch", "records": [
            _in_batch(_POISON[0]), {**_in_batch(_POISON[1]), "seq": -1}]}),
        "invalid", "records[1] (step): field 'seq' must not be negative"),
    "ack from the client": (encode(Ack(run="poison", session="s", seq=1)), "invalid",
                            "ack frames are sent by the server"),
    "oversized": (_TOO_BIG, "too_large", f"exceeds the limit of {LIMIT}"),
}


@pytest.mark.parametrize("name", list(BAD_FRAMES))
def test_bad_frame_gets_error_frame_and_connection_stays_usable(srv: ServerThread,
                                                                 name: str) -> None:
    frame, code, text = BAD_FRAMES[name]
    after = f"after {name}"
    with ingest(srv) as ws:
        ws.send(frame)
        error = reply(ws)
        assert (error["v"], error["type"], error["code"], error["fatal"]) == (
            1, "error", code, False)
        assert text in error["message"]
        ws.send(batch(*steps(after, 1)))
        assert reply(ws) == ack(after, 1)

    names = run_names(srv)
    assert after in names
    assert "poison" not in names  # nothing of a refused frame is stored


# --------------------------------------------------------------------------- who may connect


@pytest.mark.parametrize("token", [None, "wrong-token-value"])
def test_missing_or_wrong_token_is_refused_in_the_handshake(srv: ServerThread,
                                                            token: str | None) -> None:
    with pytest.raises(InvalidStatus) as refused:
        ingest(srv, token)
    assert refused.value.response.status_code == 401
    assert b"missing or wrong ingest token" in refused.value.response.body


def test_token_in_the_query_string_is_accepted(srv: ServerThread) -> None:
    with ingest(srv, None, query=f"?token={TOKEN}") as ws:
        ws.send(batch(*steps("by-query", 1)))
        assert reply(ws) == ack("by-query", 1)


def test_foreign_origin_is_refused_on_ingest(srv: ServerThread) -> None:
    with pytest.raises(InvalidStatus) as refused:
        ingest(srv, origin="https://evil.example")
    assert refused.value.response.status_code == 403


def test_same_origin_is_accepted_on_ingest(srv: ServerThread) -> None:
    origin = f"http://127.0.0.1:{srv.port}"
    with ingest(srv, origin=origin) as ws:
        ws.send(batch(*steps("same-origin", 1)))
        assert reply(ws) == ack("same-origin", 1)


def test_server_without_ingest_token_accepts_anyone(tmp_path: Path) -> None:
    with ServerThread(Settings(port=0, data_dir=tmp_path, log_alerts=False)) as open_srv, \
            ingest(open_srv, None) as ws:
        ws.send(batch(*steps("open", 1)))
        assert reply(ws) == ack("open", 1)
