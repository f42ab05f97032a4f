"""Protocol version 2 over a real server: binary batch frames are acknowledged and stored like
version-1 JSON frames — NaN and ±Inf as themselves — on the same connection, and an unknown
binary version gets a clear error frame that loses nothing else."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from websockets.sync.client import ClientConnection, connect

from trainvitals.protocol import Batch, RunStart, Step, TensorStats, encode
from trainvitals.protocol.binary import encode_batch_v2
from trainvitals.protocol.floats import float_from_wire
from trainvitals.server import ServerThread, Settings

TOKEN = "ingest-token-for-binary-tests"


@pytest.fixture
def srv(tmp_path: Any) -> Iterator[ServerThread]:
    settings = Settings(port=0, data_dir=tmp_path / "data", ingest_token=TOKEN,
                        log_alerts=False)
    with ServerThread(settings) as server:
        yield server


def ingest(srv: ServerThread) -> ClientConnection:
    return connect(f"{srv.ws_url}/ws/ingest", additional_headers={
        "Authorization": f"Bearer {TOKEN}"}, open_timeout=10, proxy=None)


def reply(ws: ClientConnection) -> dict[str, Any]:
    obj: dict[str, Any] = json.loads(ws.recv(timeout=10))
    return obj


def step(i: int) -> Step:
    return Step(run="bin", session="s", seq=i + 1, step=i, time=2.0 + i,
                loss=math.nan if i == 3 else 0.1 * i, grad_norm=math.inf if i == 3 else 1.0,
                components={"points": -math.inf if i == 3 else 0.5},
                tensors={"depth": TensorStats(16, int(i == 3), 0, 0, 0.0, 2.0, 1.0, 2.0,
                                              "float32")})


def test_binary_and_json_frames_are_stored_alike_on_one_connection(srv: ServerThread) -> None:
    with ingest(srv) as ws:
        ws.send(encode(RunStart(run="bin", session="s", time=1.0)))  # v1 JSON
        assert reply(ws)["seq"] == 0
        ws.send(encode_batch_v2([step(i) for i in range(5)]))  # v2 binary
        assert reply(ws) == {"v": 1, "type": "ack", "run": "bin", "session": "s", "seq": 5,
                             "rank": 0}
        ws.send(encode(Batch((step(5),))))  # and JSON again
        assert reply(ws)["seq"] == 6
    api = f"{srv.http_url}/api"
    (run,) = httpx.get(f"{api}/runs").json()["runs"]
    found = httpx.get(f"{api}/runs/{run['id']}/series", params={
        "name": ["loss", "grad_norm", "loss/points", "tensor/depth/nan"]}).json()["series"]
    series = {s["name"]: dict(zip(s["steps"], map(float_from_wire, s["values"]), strict=True))
              for s in found}
    assert sorted(series["loss"]) == list(range(6))
    assert math.isnan(series["loss"][3]) and series["grad_norm"][3] == math.inf
    assert series["loss/points"][3] == -math.inf and series["tensor/depth/nan"][3] == 1.0
    assert series["loss"][4] == pytest.approx(0.4)


def test_an_unknown_binary_version_gets_an_error_frame_and_the_connection_goes_on(
        srv: ServerThread) -> None:
    frame = bytearray(encode_batch_v2([RunStart(run="bin", session="s", time=1.0)]))
    frame[3] = 9
    with ingest(srv) as ws:
        ws.send(bytes(frame))
        error = reply(ws)
        assert error["type"] == "error" and error["code"] == "unsupported_version"
        assert "binary protocol version 9" in error["message"]
        ws.send(encode_batch_v2([RunStart(run="bin", session="s", time=1.0)]))
        assert reply(ws)["type"] == "ack"


def test_mangled_binary_frames_each_get_an_error_and_lose_nothing_else(srv: ServerThread) -> None:
    import random

    good = encode_batch_v2([RunStart(run="bin", session="s", time=1.0), step(0)])
    rng = random.Random(7)
    with ingest(srv) as ws:
        refused = 0
        for _ in range(30):
            frame = bytearray(good)
            for _ in range(3):
                frame[rng.randrange(4, len(frame))] = rng.randrange(256)
            cut = rng.choice([len(frame), rng.randrange(4, len(frame))])
            ws.send(bytes(frame[:cut]))
            answer = reply(ws)
            refused += answer["type"] == "error"
            assert answer["type"] in ("error", "ack"), answer
        assert refused > 0
        ws.send(good)  # the connection still works, and the good frame is stored once
        assert reply(ws)["type"] == "ack"
