"""Two real servers on one PostgreSQL database: what one ingests, the other's viewers see.

Replica A and replica B are real uvicorn servers (``database_url`` = the same database). A
trainer's frame goes to A; a live websocket on B must get its steps and its alert exactly
once, B's REST API must list the alert, and only A's webhook may post it.

"Exactly once" needs a barrier, since a duplicate could come late: one replica's messages
reach another in publish order, so after the first frame each side ingests one more run
start, and everything about the first frame must have arrived before that run's news.
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from websockets.sync.client import ClientConnection, connect
from websockets.typing import Origin

from trainvitals.protocol import Batch, Record, RunStart, Step, encode
from trainvitals.server import ServerThread

Message = dict[str, Any]
StartServer = Callable[..., ServerThread]


class Hook:
    """A real HTTP endpoint that counts the webhook posts it gets."""

    def __init__(self) -> None:
        self.bodies: list[Any] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                hook.bodies.append(json.loads(self.rfile.read(
                    int(self.headers["Content-Length"]))))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/hook"
        threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def hooks() -> Iterator[tuple[Hook, Hook]]:
    pair = Hook(), Hook()
    yield pair
    for hook in pair:
        hook.close()


def viewer(srv: ServerThread) -> ClientConnection:
    return connect(f"{srv.ws_url}/ws/live", origin=Origin(f"http://127.0.0.1:{srv.port}"),
                   open_timeout=10, proxy=None)


def follow_all(ws: ClientConnection) -> None:
    """Subscribe to every run; the error answering "{}" proves the subscription is in force."""
    ws.send(json.dumps({"subscribe": ["*"]}))
    ws.send("{}")
    assert json.loads(ws.recv(timeout=10))["type"] == "error"


def receive_until(ws: ClientConnection, done: Callable[[Message], bool]) -> list[Message]:
    seen: list[Message] = []
    while not seen or not done(seen[-1]):
        seen.append(json.loads(ws.recv(timeout=20)))
    return seen


def ingest(srv: ServerThread, token: str, records: list[Record]) -> None:
    with connect(f"{srv.ws_url}/ws/ingest", additional_headers={"Authorization": f"Bearer {token}"},
                 open_timeout=10, proxy=None) as ws:
        ws.send(encode(Batch(tuple(records))))
        assert json.loads(ws.recv(timeout=20))["type"] == "ack"


def started(run: str) -> Callable[[Message], bool]:
    return lambda m: m["type"] == "run" and m["run"] == run


def points(messages: list[Message], run: str) -> list[tuple[int, Any]]:
    return [(r["step"], r["values"]["loss"]) for m in messages
            if m["type"] == "steps" and m["run"] == run for r in m["records"]]


def incident_changes(messages: list[Message]) -> list[tuple[str, str, int]]:
    return [(m["change"], m["incident"]["run"], m["incident"]["number"])
            for m in messages if m["type"] == "incident"]


def alert_changes(messages: list[Message]) -> list[tuple[str, str, str, str]]:
    return [(m["change"], m["alert"]["run"], m["alert"]["rule"], m["alert"]["series"])
            for m in messages if m["type"] == "alert"]


def test_a_point_and_an_alert_ingested_on_a_reach_b_once(
        postgres_url: str, start_server: StartServer, ingest_token: str,
        hooks: tuple[Hook, Hook]) -> None:
    a = start_server(database_url=postgres_url, webhook_urls=[hooks[0].url])
    b = start_server(database_url=postgres_url, webhook_urls=[hooks[1].url])
    frame: list[Record] = [
        RunStart(run="on-a", session="s", time=1.0),
        Step(run="on-a", session="s", seq=1, step=0, time=2.0, loss=1.5),
        Step(run="on-a", session="s", seq=2, step=1, time=3.0, loss=math.nan),  # → nonfinite
    ]
    with viewer(a) as on_a, viewer(b) as on_b:
        follow_all(on_a)
        follow_all(on_b)
        ingest(a, ingest_token, frame)
        ingest(b, ingest_token, [RunStart(run="barrier-b", session="s")])
        seen_on_a = receive_until(on_a, started("barrier-b"))  # came through the database
        ingest(a, ingest_token, [RunStart(run="barrier-a", session="s")])
        seen_on_b = receive_until(on_b, started("barrier-a"))

    expected = [("opened", "on-a", "nonfinite", "loss")]
    for seen in (seen_on_a, seen_on_b):
        assert points(seen, "on-a") == [(0, 1.5), (1, "NaN")]  # once each, NaN as itself
        assert alert_changes(seen) == expected
        assert incident_changes(seen) == [("opened", "on-a", 1)]
        assert [m["run"] for m in seen if m["type"] == "run"].count("on-a") == 1

    response = httpx.get(f"{b.http_url}/api/alerts", params={"run": "on-a"}, timeout=10)
    (alert,) = response.json()["alerts"]  # B reads the alert A's engine raised, once
    assert (alert["rule"], alert["series"], alert["state"], alert["details"]["value"]) == (
        "nonfinite", "loss", "open", "NaN")

    a.stop()  # each posts what its webhook sink holds before it returns
    b.stop()
    assert [(c["change"], c["number"]) for body in hooks[0].bodies
            for c in body["incidents"]] == [("opened", 1)]
    assert hooks[1].bodies == []  # relayed incidents reach B's browsers, not B's sinks


def test_a_stream_that_fails_over_keeps_its_open_alert_without_opening_it_again(
        postgres_url: str, start_server: StartServer, ingest_token: str) -> None:
    # The trainer's stream moves from A to B (A died): B's engine must continue A's open alert
    # (loaded from the database when the run first reaches B), not announce it opened again.
    a = start_server(database_url=postgres_url)
    b = start_server(database_url=postgres_url)  # running before the alert exists
    ingest(a, ingest_token, [RunStart(run="moves", session="s", time=1.0),
                             Step(run="moves", session="s", seq=1, step=0, time=2.0,
                                  loss=math.nan)])
    a.stop()
    with viewer(b) as on_b:
        follow_all(on_b)
        ingest(b, ingest_token, [Step(run="moves", session="s", seq=2, step=1, time=3.0,
                                      loss=math.nan)])
        ingest(b, ingest_token, [RunStart(run="barrier", session="s")])
        seen = receive_until(on_b, started("barrier"))

    assert points(seen, "moves") == [(1, "NaN")]
    assert [c for c in alert_changes(seen) if c[0] == "opened"] == []
    assert [c for c in incident_changes(seen) if c[0] == "opened"] == []  # continued, too
    (incident,) = httpx.get(f"{b.http_url}/api/incidents", params={"run": "moves"},
                            timeout=10).json()["incidents"]
    assert (incident["number"], incident["state"], incident["onset_step"]) == (1, "open", 0)
    response = httpx.get(f"{b.http_url}/api/alerts", params={"run": "moves"}, timeout=10)
    (alert,) = response.json()["alerts"]
    assert (alert["state"], alert["first_step"], alert["last_step"]) == ("open", 0, 1)


def relay_counts(srv: ServerThread) -> dict[str, float]:
    text = httpx.get(f"{srv.http_url}/metrics", timeout=10).text
    prefix = 'trainvitals_relay_messages_total{event="'
    return {line[len(prefix):].split('"')[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines() if line.startswith(prefix)}


def test_metrics_count_what_the_relay_sent_and_received(
        postgres_url: str, start_server: StartServer, ingest_token: str) -> None:
    a = start_server(database_url=postgres_url)
    b = start_server(database_url=postgres_url)
    with viewer(b) as on_b:
        follow_all(on_b)
        ingest(a, ingest_token, [RunStart(run="counted", session="s")])
        receive_until(on_b, started("counted"))  # relayed: A sent it, B received it
    sent, received = relay_counts(a), relay_counts(b)
    assert sent["sent"] >= 1 and received["received"] >= 1
    assert set(sent) == {"sent", "received", "spilled", "dropped", "resyncs_sent", "reconnects"}
    assert (sent["dropped"], received["dropped"]) == (0, 0)
