"""``GET /metrics`` on a real server, read with Prometheus' own text parser."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families
from websockets.sync.client import ClientConnection, connect
from websockets.typing import Origin

from trainvitals.protocol import Batch, Record, RunStart, Step, encode
from trainvitals.server import ServerThread
from trainvitals.server.http.metrics import store_bytes

TOKEN = "ingest-token-for-tests"  # the conftest's

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(srv: ServerThread, **headers: str) -> Samples:
    response = httpx.get(f"{srv.http_url}/metrics", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(response.text)
            for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def until(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "condition not met in time"
        time.sleep(0.02)


def producer(srv: ServerThread) -> ClientConnection:
    ws: ClientConnection = connect(f"{srv.ws_url}/ws/ingest", proxy=None,
                                   additional_headers={"Authorization": f"Bearer {TOKEN}"})
    return ws


def send(ws: ClientConnection, records: list[Record]) -> None:
    ws.send(encode(Batch(tuple(records))))
    assert json.loads(ws.recv(timeout=10))["seq"] == records[-1].seq


def run(name: str, losses: list[float]) -> list[Record]:
    start: list[Record] = [RunStart(run=name, session="s", time=1.0)]
    return start + [
        Step(run=name, session="s", seq=i + 1, step=i, time=2.0 + i, loss=x, lr=0.1)
        for i, x in enumerate(losses)]


def test_counters_move_with_ingest(server: ServerThread) -> None:
    before = scrape(server)
    assert value(before, "trainvitals_ingest_records_total") == 0
    assert value(before, "trainvitals_ingest_values_total") == 0
    with producer(server) as ws:
        send(ws, run("m1", [1.0, 2.0, 3.0]))  # 1 start + 3 steps, 2 values per step
        mid = scrape(server)
        assert value(mid, "trainvitals_ingest_records_total") == 4
        assert value(mid, "trainvitals_ingest_values_total") == 6
        send(ws, run("m1", [1.0, 2.0, 3.0]))  # a resend: duplicates are not counted
        send(ws, run("m2", [5.0]))
    after = scrape(server)
    assert value(after, "trainvitals_ingest_records_total") == 6
    assert value(after, "trainvitals_ingest_values_total") == 8


def test_connected_producers_and_viewers(server: ServerThread) -> None:
    def gauges() -> tuple[float, float]:
        s = scrape(server)
        return (value(s, "trainvitals_producers_connected"),
                value(s, "trainvitals_viewers_connected"))

    assert gauges() == (0, 0)
    with producer(server), producer(server):
        assert gauges()[0] == 2
        with connect(f"{server.ws_url}/ws/live", origin=Origin(server.http_url), proxy=None):
            until(lambda: gauges() == (2, 1))
    until(lambda: gauges() == (0, 0))


def test_open_alerts_by_run_and_severity_and_store_size(server: ServerThread) -> None:
    with producer(server) as ws:
        send(ws, run("bad", [1.0, math.nan, math.nan]))
        send(ws, run("good", [1.0, 0.9]))
    samples = scrape(server)
    alerts = {labels: v for (name, labels), v in samples.items()
              if name == "trainvitals_open_alerts"}
    assert alerts == {(("run", "bad"), ("severity", "critical")): 1}
    on_disk = store_bytes(server.settings.db_path)
    assert on_disk > 0
    assert value(samples, "trainvitals_store_bytes") == on_disk


def test_metrics_need_the_view_token_when_one_is_set(
        start_server: Callable[..., ServerThread], tmp_path: Path) -> None:
    srv = start_server(view_token="view-token-123")
    assert httpx.get(f"{srv.http_url}/metrics").status_code == 401
    samples = scrape(srv, authorization="Bearer view-token-123")
    assert value(samples, "trainvitals_ingest_records_total") == 0


def test_metrics_can_be_switched_off(start_server: Callable[..., ServerThread]) -> None:
    srv = start_server(metrics=False)
    assert httpx.get(f"{srv.http_url}/metrics").status_code == 404


def test_each_app_has_its_own_registry(start_server: Callable[..., ServerThread],
                                       tmp_path: Path) -> None:
    a = start_server()
    b = start_server(data_dir=tmp_path / "other")
    with producer(a) as ws:
        send(ws, run("only-in-a", [1.0]))
    assert value(scrape(a), "trainvitals_ingest_records_total") == 2
    assert value(scrape(b), "trainvitals_ingest_records_total") == 0
