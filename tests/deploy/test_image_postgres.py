"""The server image stores in PostgreSQL when ``TRAINVITALS_DATABASE_URL`` is set: the image
carries the ``postgres`` extra, and a containerised server writes a trainer's NaN step into the
tests' throwaway cluster (host network, 127.0.0.1), where it is read back as NaN."""

from __future__ import annotations

import json
import math
import time
from typing import Any

import httpx
import psycopg
import pytest
from websockets.sync.client import connect

from tests.support.ports import free_port
from trainvitals.protocol import Batch, RunStart, Step, encode

pytestmark = pytest.mark.deploy

IMAGE = "localhost/trainvitals-server:test"  # built by the compose fixture (compose.test.yml)
TOKEN = "ingest-token-for-the-postgres-image-test"



def _wait_healthy(api: str, container: str, compose: Any) -> None:
    for _ in range(240):  # bounded by a count; no timing is asserted
        try:
            if httpx.get(f"{api}/healthz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.5)
    logs = compose.podman("logs", container, check=False)
    raise AssertionError(f"the server container never came up:\n{logs.stdout}{logs.stderr}")


def test_server_image_stores_in_postgresql(compose: Any, postgres_url: str) -> None:
    port, name = free_port(), f"{compose.project}_pg_server"
    compose.podman("run", "-d", "--rm", "--name", name, "--network=host",
                   "-e", "TRAINVITALS_HOST=127.0.0.1", "-e", f"TRAINVITALS_PORT={port}",
                   "-e", f"TRAINVITALS_DATABASE_URL={postgres_url}",
                   "-e", f"TRAINVITALS_INGEST_TOKEN={TOKEN}", IMAGE)
    api = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(api, name, compose)
        with connect(f"ws://127.0.0.1:{port}/ws/ingest", open_timeout=10, proxy=None,
                     additional_headers={"Authorization": f"Bearer {TOKEN}"}) as ws:
            ws.send(encode(Batch((RunStart(run="in-pg", session="s", time=1.0),
                                  Step(run="in-pg", session="s", seq=1, step=0, time=2.0,
                                       loss=math.nan)))))
            assert json.loads(ws.recv(timeout=30))["type"] == "ack"
        (run,) = httpx.get(f"{api}/api/runs", timeout=10).json()["runs"]
        series = httpx.get(f"{api}/api/runs/{run['id']}/series", params={"name": "loss"},
                           timeout=10).json()["series"]
        assert (run["name"], series[0]["values"]) == ("in-pg", ["NaN"])
    finally:
        compose.podman("stop", "-t", "5", name, check=False)
    with psycopg.connect(postgres_url) as conn:  # stored in PostgreSQL, as NaN, not NULL
        (value,) = conn.execute("SELECT p.value FROM points p JOIN series s ON s.id=p.series_id "
                                "WHERE s.name='loss'").fetchone() or (None,)
    assert isinstance(value, float) and math.isnan(value)
