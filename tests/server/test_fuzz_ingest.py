"""10,000 fuzzed frames against the live ingest endpoint of a real server.

Frames are mutations of valid batches — flipped, inserted and deleted bytes, truncations,
fields removed or set to wrong values, wrong versions and types, garbage, deep nesting,
oversized frames — with some left valid. The protocol decoder, run here on each frame, says
what the server must answer; the server must answer exactly that (in order), store exactly the
valid frames' records (no partial rows of refused ones), log the bad frames, and afterwards
still ingest valid data and serve the page.
"""

from __future__ import annotations

import json
import logging
import random
import sqlite3
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from websockets.sync.client import ClientConnection, connect

from trainvitals.protocol import (
    Batch,
    ProtocolError,
    Record,
    RunEnd,
    RunStart,
    Step,
    TensorStats,
    decode,
    encode,
)
from trainvitals.protocol.series import step_values
from trainvitals.server import ServerThread, Settings

TOKEN = "fuzz-ingest-token"
LIMIT = 4096  # max_message_bytes: oversized frames stay cheap (uvicorn's own cap is 4x)
FRAMES = 10_000
CHUNK = 250  # frames per connection, closed by a sentinel whose ack proves all replies came
WEIRD: list[Any] = [None, True, -1, 0, 2**64, -(2**63) - 1, 1.5, "", "x" * 300, "NaN", "nan",
                    "\u0000", "\ud800", [], {}, [1, [2]], {"a": {"b": None}}, "Infinity"]


def valid_records(i: int, rng: random.Random) -> list[Record]:
    run, session = f"fuzz-{i % 40}", f"s{i}"
    records: list[Record] = [RunStart(run=run, session=session, time=1.0 + i,
                                      config={"i": i})]
    for j in range(rng.randint(0, 3)):
        stats = TensorStats(count=4, nan=j, posinf=0, neginf=0, min=-1.0, max=float(i),
                            mean=0.5, absmax=float(i), dtype="float32", headroom=80.0)
        records.append(Step(run=run, session=session, seq=j + 1, step=i * 10 + j,
                            time=2.0 + i, loss=float(j), grad_norm=0.5,
                            components={"a": 1.0}, tensors={"z": stats} if j % 2 else {}))
    if rng.random() < 0.3:
        records.append(RunEnd(run=run, session=session, seq=len(records), time=3.0 + i))
    return records


def mutate_json(obj: Any, rng: random.Random) -> None:
    """Change one field somewhere inside ``obj``: remove it, or give it a weird value."""
    path: list[Any] = []
    node = obj
    while isinstance(node, (dict, list)) and node and rng.random() < 0.7:
        key = rng.choice(list(node)) if isinstance(node, dict) else rng.randrange(len(node))
        path.append((node, key))
        node = node[key]
    if not path:
        obj["v" if rng.random() < 0.5 else "type"] = rng.choice([*WEIRD, 2, "hello"])
        return
    parent, key = path[-1]
    if isinstance(parent, dict) and rng.random() < 0.3:
        del parent[key]
    else:
        parent[key] = rng.choice(WEIRD)


def fuzzed(i: int, rng: random.Random) -> str | bytes:
    """Frame number ``i``: a valid batch, then (mostly) broken in one of many ways."""
    text = encode(Batch(tuple(valid_records(i, rng))))
    kind = rng.randrange(12)
    if kind == 0:
        return text  # valid
    if kind in (1, 2):
        obj = json.loads(text)
        mutate_json(obj, rng)
        return json.dumps(obj, ensure_ascii=rng.random() < 0.5)
    data = bytearray(text.encode())
    if kind == 3:
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        return bytes(data) if rng.random() < 0.5 else data.decode("utf-8", "replace")
    if kind == 4:
        return text[: rng.randrange(len(text))]  # truncated
    if kind == 5:
        at = rng.randrange(len(text))
        return text[:at] + rng.choice(['"', "{", "]", ",", "NaN", "\\", "1e999"]) + text[at:]
    if kind == 6:
        at = rng.randrange(len(text))
        return text[:at] + text[at + rng.randint(1, 20):]
    if kind == 7:
        return bytes(rng.randrange(256) for _ in range(rng.randint(0, 200)))
    if kind == 8:
        return "".join(chr(rng.randrange(32, 0x2FFF)) for _ in range(rng.randint(0, 100)))
    if kind == 9:
        depth = rng.choice([10, 1500, 6000])  # 1500: deeper than the parser goes
        return '{"v":1,"type":"batch","records":' + "[" * depth + "]" * depth + "}"
    if kind == 10:
        pad = "x" * rng.randint(LIMIT, 3 * LIMIT)
        return text.replace('"config":{', f'"config":{{"pad":"{pad}",', 1)
    obj = json.loads(text)
    obj["v"] = rng.choice([0, 2, "1", 1.0, True, None])
    return json.dumps(obj)


def sendable(frame: str | bytes) -> str | bytes:
    """Text that UTF-8 cannot carry (a lone surrogate) goes out as the bytes a careless
    encoder would produce, in a binary frame."""
    if isinstance(frame, str):
        try:
            frame.encode()
        except UnicodeEncodeError:
            return frame.encode("utf-8", "surrogatepass")
    return frame


def expected(frame: str | bytes) -> tuple[list[Record], str | None]:
    """What the server must do: store these records, or answer with this error code."""
    try:
        message = decode(frame, max_bytes=LIMIT)
    except ProtocolError as exc:
        return [], exc.code
    if isinstance(message, Batch):
        return list(message.records), None
    if isinstance(message, (RunStart, Step, RunEnd)):
        return [message], None
    return [], "invalid"  # ack / error frames are the server's to send


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    settings = Settings(port=0, data_dir=tmp_path_factory.mktemp("fuzz"), ingest_token=TOKEN,
                        max_message_bytes=LIMIT, log_alerts=False)
    with ServerThread(settings) as server:
        yield server


def ingest(srv: ServerThread) -> ClientConnection:
    ws: ClientConnection = connect(f"{srv.ws_url}/ws/ingest", proxy=None, open_timeout=10,
                                   additional_headers={"Authorization": f"Bearer {TOKEN}"},
                                   max_queue=None)
    return ws


def send_chunk(srv: ServerThread, frames: list[str | bytes], sentinel: str) -> list[str]:
    """Send frames on one connection; the error codes the server answered, in order."""
    codes: list[str] = []
    with ingest(srv) as ws:
        for frame in frames:
            ws.send(frame)
        ws.send(encode(RunStart(run="sentinel", session=sentinel)))
        while True:
            reply = json.loads(ws.recv(timeout=60))
            if reply["type"] == "error":
                codes.append(reply["code"])
            elif (reply["run"], reply["session"]) == ("sentinel", sentinel):
                return codes  # errors come in frame order, before this later ack


def stored(srv: ServerThread) -> tuple[set[tuple[str, int, str, int]], set[tuple[str, int, int]],
                                       dict[tuple[str, int, int], int]]:
    """(run, rank, session, seq) seen, (run, rank, step) stored, and points per step."""
    with sqlite3.connect(srv.settings.db_path) as db:
        seen = set(db.execute(
            "SELECT r.name, st.rank, st.session, s.seq FROM seen s "
            "JOIN streams st ON st.id=s.stream_id JOIN runs r ON r.id=st.run_id"))
        steps = set(db.execute("SELECT r.name, s.rank, s.step FROM steps s "
                               "JOIN runs r ON r.id=s.run_id"))
        points = {(run, rank, step): n for run, rank, step, n in db.execute(
            "SELECT r.name, se.rank, p.step, count(*) FROM points p "
            "JOIN series se ON se.id=p.series_id JOIN runs r ON r.id=se.run_id "
            "GROUP BY r.name, se.rank, p.step")}
    db.close()
    return seen, steps, points


@pytest.mark.slow
def test_ten_thousand_fuzzed_frames_store_exactly_the_valid_ones(
        srv: ServerThread, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="trainvitals.server")
    rng = random.Random(20240611)
    frames = [sendable(fuzzed(i, rng)) for i in range(FRAMES)]
    outcomes = [expected(f) for f in frames]
    codes = {code for _, code in outcomes}
    assert {None, "malformed", "invalid", "unsupported_version", "too_large"} <= codes
    assert sum(code is not None for _, code in outcomes) > FRAMES * 0.75

    for k in range(0, FRAMES, CHUNK):
        answered = send_chunk(srv, frames[k:k + CHUNK], f"chunk{k}")
        want = [code for _, code in outcomes[k:k + CHUNK] if code is not None]
        assert answered == want, f"frames {k}..{k + CHUNK}"

    # Exactly the valid frames' records are stored (the first copy of a repeated seq wins).
    first: dict[tuple[str, int, str, int], Record] = {}
    for records, _ in outcomes:
        for r in records:
            first.setdefault((r.run, r.rank, r.session, r.seq), r)
    sentinels = {("sentinel", 0, f"chunk{k}", 0) for k in range(0, FRAMES, CHUNK)}
    seen, steps, points = stored(srv)
    assert seen == set(first) | sentinels
    kept_steps = [r for r in first.values() if isinstance(r, Step)]
    assert steps == {(s.run, s.rank, s.step) for s in kept_steps}
    series: dict[tuple[str, int, int], set[str]] = {}
    for s in kept_steps:  # steps of two streams may share a number: their series add up
        series.setdefault((s.run, s.rank, s.step), set()).update(step_values(s))
    assert points == {key: len(names) for key, names in series.items() if names}

    bad = [r for r in caplog.records if r.getMessage().startswith("bad frame from")]
    summaries = [r for r in caplog.records if "bad frames (" in r.getMessage()]
    assert len(bad) == 10 * (FRAMES // CHUNK)  # ten logged per connection, then counted
    assert len(summaries) == FRAMES // CHUNK


def test_after_fuzzing_the_server_still_ingests_and_serves_the_page(srv: ServerThread) -> None:
    records = [RunStart(run="after-fuzz", session="ok"),
               Step(run="after-fuzz", session="ok", seq=1, step=0, loss=1.25)]
    with ingest(srv) as ws:
        ws.send(b"\xff\x00 garbage first")
        assert json.loads(ws.recv(timeout=10))["code"] == "malformed"
        ws.send(encode(Batch(tuple(records))))
        assert json.loads(ws.recv(timeout=10))["seq"] == 1
    runs = httpx.get(f"{srv.http_url}/api/runs", timeout=10).json()["runs"]
    (run,) = [r for r in runs if r["name"] == "after-fuzz"]
    assert run["steps"] == 1
    page = httpx.get(f"{srv.http_url}/", timeout=10)
    assert page.status_code == 200 and "<html" in page.text.lower()
    assert httpx.get(f"{srv.http_url}/healthz", timeout=10).json()["status"] == "ok"
