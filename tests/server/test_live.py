"""The browser-facing websocket over a real server: origin checks, subscriptions, pushed updates."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import ClientConnection, connect

from trainvitals.protocol import Batch, Record, RunStart, Step, TensorStats, encode
from trainvitals.server import ServerThread

Message = dict[str, Any]


def viewer(srv: ServerThread, *, origin: str | None = "same", query: str = "",
           token: str | None = None) -> ClientConnection:
    if origin == "same":
        origin = f"http://127.0.0.1:{srv.port}"
    headers = {"Authorization": f"Bearer {token}"} if token else None
    return connect(f"{srv.ws_url}/ws/live{query}", origin=origin,  # type: ignore[arg-type]
                   additional_headers=headers, open_timeout=10, proxy=None)


def subscribe(ws: ClientConnection, *runs: str) -> None:
    """Subscribe and wait until the server has applied it.

    The server reads a viewer's messages in order and answers a malformed one with an error,
    so once that error arrives the subscription before it is in force.
    """
    ws.send(json.dumps({"subscribe": list(runs)}))
    ws.send("{}")
    for message in receive_until(ws, lambda m: m["type"] == "error"):
        assert message["type"] != "steps"


def receive_until(ws: ClientConnection, done: Callable[[Message], bool]) -> list[Message]:
    """Messages up to and including the first one for which ``done`` holds."""
    seen: list[Message] = []
    while True:
        # parse_constant: a bare NaN/Infinity token would be invalid JSON for a browser
        message = json.loads(ws.recv(timeout=10), parse_constant=_no_bare_constants)
        seen.append(message)
        if done(message):
            return seen


def _no_bare_constants(token: str) -> Any:
    raise AssertionError(f"bare {token} in a live message")


def send_and_wait_ack(srv: ServerThread, token: str, records: list[Record]) -> None:
    with connect(f"{srv.ws_url}/ws/ingest", additional_headers={"Authorization": f"Bearer {token}"},
                 open_timeout=10, proxy=None) as ws:
        ws.send(encode(Batch(tuple(records))))
        reply = json.loads(ws.recv(timeout=10))
        assert reply["type"] == "ack", reply


@pytest.fixture
def srv(server: ServerThread) -> Iterator[ServerThread]:
    yield server


@pytest.mark.parametrize("origin", ["https://evil.example", "http://127.0.0.1:1", None])
def test_foreign_or_missing_origin_is_refused(srv: ServerThread, origin: str | None) -> None:
    with pytest.raises(InvalidStatus) as refused:
        viewer(srv, origin=origin)
    assert refused.value.response.status_code == 403


def test_same_origin_viewer_gets_steps_and_alerts_of_its_runs_and_every_incident(
        srv: ServerThread, ingest_token: str) -> None:
    records: list[Record] = [
        RunStart(run="watched", session="s", time=1.0),
        Step(run="watched", session="s", seq=1, step=0, time=2.0, loss=1.5, loss_used=1.5,
             grad_norm=0.25, scalars={"acc": 0.5}),
        Step(run="watched", session="s", seq=2, step=1, time=3.0, loss=math.nan,
             loss_used=math.inf, grad_norm=-math.inf,
             tensors={"z": TensorStats(count=2, nan=2, posinf=0, neginf=0, min=math.nan,
                                       max=math.nan, mean=math.nan, absmax=math.nan)}),
    ]
    other: list[Record] = [RunStart(run="other", session="o"),
                           Step(run="other", session="o", seq=1, step=0, loss=2.0)]
    with viewer(srv) as follower, viewer(srv) as bystander:
        subscribe(follower, "watched")
        subscribe(bystander, "other")
        send_and_wait_ack(srv, ingest_token, records)
        send_and_wait_ack(srv, ingest_token, other)

        # One writer publishes in commit order, so everything about "watched" (steps, then
        # its alerts) reaches a viewer before the news that "other" started.
        got = receive_until(follower, lambda m: m["type"] == "run" and m["run"] == "other")
        seen_by_bystander = receive_until(bystander, lambda m: m["type"] == "steps")

    steps = [m for m in got if m["type"] == "steps"]
    points = [r for m in steps for r in m["records"]]
    assert all(m["run"] == "watched" and isinstance(m["run_id"], int) for m in steps)
    assert [(p["rank"], p["step"], p["time"]) for p in points] == [(0, 0, 2.0), (0, 1, 3.0)]
    assert points[0]["values"] == {"loss": 1.5, "loss_used": 1.5, "grad_norm": 0.25,
                                   "scalar/acc": 0.5}
    assert {k: points[1]["values"][k] for k in ("loss", "loss_used", "grad_norm")} == {
        "loss": "NaN", "loss_used": "Infinity", "grad_norm": "-Infinity"}
    assert points[1]["values"]["tensor/z/max"] == "NaN"
    assert points[1]["values"]["tensor/z/nan"] == 2.0
    assert next(m for m in got if m["type"] == "run")["status"] == "running"

    # The follower gets the alerts (evidence, NaN kept) and the incident they make.
    alerts = [m for m in got if m["type"] == "alert"]
    assert {(a["change"], a["alert"]["rule"], a["alert"]["series"]) for a in alerts} >= {
        ("opened", "nonfinite", "loss"), ("opened", "nonfinite", "loss_used"),
        ("opened", "nonfinite", "tensor/z")}
    by_series = {a["alert"]["series"]: a["alert"] for a in alerts}
    assert by_series["loss"]["details"]["value"] == "NaN"
    assert by_series["loss_used"]["details"]["value"] == "Infinity"
    assert (by_series["loss"]["run"], by_series["loss"]["severity"]) == ("watched", "critical")
    # Incidents go to every viewer, whatever it follows; alerts only to the run's followers.
    for messages in (got, seen_by_bystander):
        (opened,) = [m for m in messages if m["type"] == "incident" and m["change"] == "opened"]
        incident = opened["incident"]
        assert (incident["run"], incident["number"], incident["severity"], incident["onset_step"]
                ) == ("watched", 1, "critical", 1)
        assert incident["evidence_count"] >= 3 and "step 1" in incident["headline"]
    assert [m for m in seen_by_bystander if m["type"] == "alert"] == []
    assert [m["run"] for m in seen_by_bystander if m["type"] == "steps"] == ["other"]


def test_subscribe_star_follows_every_run(srv: ServerThread, ingest_token: str) -> None:
    with viewer(srv) as ws:
        subscribe(ws, "*")
        send_and_wait_ack(srv, ingest_token, [RunStart(run="any", session="s"),
                                              Step(run="any", session="s", seq=1, step=7)])
        got = receive_until(ws, lambda m: m["type"] == "steps")
    assert got[-1]["run"] == "any" and got[-1]["records"][0]["step"] == 7


def test_malformed_subscription_gets_an_error_and_keeps_the_connection(srv: ServerThread) -> None:
    with viewer(srv) as ws:
        for bad in ("not json", '{"subscribe": "r"}', '{"subscribe": [1]}', "[]"):
            ws.send(bad)
            assert json.loads(ws.recv(timeout=10)) == {
                "type": "error", "message": 'expected {"subscribe": ["run", ...]}'}


def test_view_token_guards_the_live_socket(start_server: Callable[..., ServerThread]) -> None:
    srv = start_server(view_token="view-token-1234")
    with pytest.raises(InvalidStatus) as refused:
        viewer(srv)
    assert refused.value.response.status_code == 401
    with pytest.raises(InvalidStatus) as refused:
        viewer(srv, token="wrong-view-token")
    assert refused.value.response.status_code == 401
    for ws in (viewer(srv, token="view-token-1234"), viewer(srv, query="?token=view-token-1234")):
        with ws:
            ws.send("{}")
            assert json.loads(ws.recv(timeout=10))["type"] == "error"  # connected and served
