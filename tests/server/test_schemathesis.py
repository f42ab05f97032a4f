"""Schemathesis against the REST API's own OpenAPI schema, on a real server with real data.

Every operation gets generated parameters (valid and invalid); each answer must conform to
the schema — no server error, a documented status code, the declared content type — and
carry the security headers.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from websockets.sync.client import connect

from trainvitals.protocol import Batch, ClipEvent, RunEnd, RunStart, Step, encode
from trainvitals.server import ServerThread, Settings
from trainvitals.server.security import SECURITY_HEADERS

INGEST, VIEW = "schemathesis-ingest", "schemathesis-view"


def _fill(srv: ServerThread) -> None:
    """Two runs with steps, clip events, a non-finite value (an alert) and an ended stream."""
    records = [RunStart(run="alpha", session="s", config={"lr": 0.1})]
    records += [Step(run="alpha", session="s", seq=i + 1, step=i, loss=float(i) if i != 3
                     else float("nan"), scalars={"acc": 0.5},
                     clip=ClipEvent(raw=20.0, threshold=10.0, action="zeroed",
                                    reason="above_threshold") if i % 2 else None)
                for i in range(6)]
    records += [RunEnd(run="alpha", session="s", seq=7), RunStart(run="beta", session="t")]
    with connect(f"{srv.ws_url}/ws/ingest", proxy=None,
                 additional_headers={"Authorization": f"Bearer {INGEST}"}) as ws:
        ws.send(encode(Batch(tuple(records))))
        replies = {ws.recv(timeout=15) for _ in range(2)}
    assert len(replies) == 2


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    settings_ = Settings(port=0, data_dir=Path(tmp_path_factory.mktemp("schemathesis")),
                         ingest_token=INGEST, view_token=VIEW, log_alerts=False)
    with ServerThread(settings_) as srv:
        _fill(srv)
        yield srv


@pytest.mark.slow
def test_every_rest_operation_conforms_to_its_schema(server: ServerThread) -> None:
    api_schema = schemathesis.openapi.from_url(f"{server.http_url}/openapi.json")
    failures: dict[str, str] = {}
    labels = []
    for result in api_schema.get_all_operations():
        operation = result.ok()
        labels.append(operation.label)
        modes = [GenerationMode.POSITIVE]
        if list(operation.iter_parameters()):  # nothing to get wrong without parameters
            modes.append(GenerationMode.NEGATIVE)
        for mode in modes:
            try:
                _check(operation, mode)
            except Exception as exc:  # collect: one report for every operation
                failures[f"{operation.label} ({mode.value})"] = str(exc)[:2000]
    assert {"GET /api/runs", "GET /api/runs/{run_id}", "GET /api/runs/{run_id}/series",
            "GET /api/runs/{run_id}/clips", "GET /api/alerts", "GET /healthz"} <= set(labels)
    assert failures == {}


def _check(operation: Any, mode: GenerationMode) -> None:
    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=15, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    def check(case: Any) -> None:
        response = case.call_and_validate(headers={"Authorization": f"Bearer {VIEW}"})
        for name, value in SECURITY_HEADERS.items():  # (header names come lower-cased)
            assert response.headers.get(name.lower()) == [value], (name, response.status_code)

    check()
