"""Stored origins of non-finite values: one row per (rank, origin step), completed by the later
op-level trace, deleted with the run, and served at ``GET /api/runs/{id}/origins``."""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
from websockets.sync.client import connect

from trainvitals.protocol import Batch, NonFiniteOrigin, Record, RunStart, Step, encode
from trainvitals.server import ServerThread, Store
from trainvitals.server.store import OriginRow

FOUND = NonFiniteOrigin(step=5, module="model.head", module_type="Linear",
                        param="model.head.weight")
TRACED = NonFiniteOrigin(step=5, kind="inf", module="model.head", module_type="Linear",
                         op="exp", source="/src/model.py:41 in forward")


def records(rank: int = 0) -> list[Record]:
    return [RunStart(run="r", session="s", rank=rank),
            Step(run="r", session="s", seq=1, step=5, rank=rank, loss=float("nan"),
                 origin=FOUND),
            Step(run="r", session="s", seq=2, step=6, rank=rank, loss=1.0),
            Step(run="r", session="s", seq=3, step=7, rank=rank, loss=1.0, origin=TRACED)]


def test_the_trace_completes_the_stored_origin(store: Store) -> None:
    store.write([*records(0), *records(1)[:2]])
    run_id = store.run_id("r")  # type: ignore[attr-defined]
    assert store.origins(run_id) == [
        OriginRow(rank=0, step=5, reported_step=7, kind="inf", stage="forward",
                  module="model.head", module_type="Linear", param="model.head.weight",
                  op="exp", source="/src/model.py:41 in forward"),
        OriginRow(rank=1, step=5, reported_step=5, kind="nan", stage="forward",
                  module="model.head", module_type="Linear", param="model.head.weight",
                  op=None, source=None),
    ]
    store.delete_run(run_id)
    assert store.origins(run_id) == []


def test_origins_over_rest(start_server: Callable[..., ServerThread],
                           ingest_token: str) -> None:
    srv = start_server()
    with connect(f"{srv.ws_url}/ws/ingest", proxy=None, open_timeout=10,
                 additional_headers={"Authorization": f"Bearer {ingest_token}"}) as ws:
        ws.send(encode(Batch(tuple(records()))))
        assert json.loads(ws.recv(timeout=10))["type"] == "ack"
    (run,) = httpx.get(f"{srv.http_url}/api/runs", timeout=10).json()["runs"]
    body = httpx.get(f"{srv.http_url}/api/runs/{run['id']}/origins", timeout=10).json()
    assert body == {"run_id": run["id"], "origins": [{
        "rank": 0, "step": 5, "reported_step": 7, "kind": "inf", "stage": "forward",
        "module": "model.head", "module_type": "Linear", "param": "model.head.weight",
        "op": "exp", "source": "/src/model.py:41 in forward"}]}
    assert httpx.get(f"{srv.http_url}/api/runs/99/origins", timeout=10).status_code == 404
    alerts = httpx.get(f"{srv.http_url}/api/alerts", params={"run": "r"}, timeout=10).json()
    (headline,) = [a for a in alerts["alerts"] if a["series"] == "origin"]
    assert headline["message"] == ("Inf first produced by model.head (Linear) at step 5: exp "
                                   "at model.py:41 in forward; first non-finite gradient: "
                                   "model.head.weight.")
