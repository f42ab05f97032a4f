"""Whether the server is up, whether it can store, and its conditions, over HTTP.

* ``GET /healthz`` — liveness: 200 while the process serves (restarting it would not free a
  disk), with ``ready`` for people who look;
* ``GET /readyz`` — readiness: 200 when every check passes, else 503 with the reason
  (``ingest.readiness``); both without a token, for probes and load balancers;
* ``GET /api/conditions`` and ``GET /api/runs/{id}/conditions`` — the conditions
  (``alerts.conditions``), behind the view token like the rest of ``/api``.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, HTTPException, Request

from trainvitals.server.alerts.conditions import Condition, Conditions
from trainvitals.server.http.params import RunId
from trainvitals.server.http.responses import WireJSONResponse
from trainvitals.server.ingest.readiness import Readiness
from trainvitals.server.views.conditions import condition_json

__all__ = ["add_condition_routes", "build_router"]

NOT_READY: dict[int | str, dict[str, Any]] = {
    503: {"description": "not ready: a check fails; ``reason`` says which and why"}}


def build_router() -> APIRouter:
    """``/healthz`` and ``/readyz``."""
    router = APIRouter()

    @router.get("/healthz")
    async def healthz(request: Request) -> Any:
        """Liveness: the writer's commit count, connected viewers, and whether it is ready."""
        state = request.app.state
        ready, _, _ = _readiness(request).status()
        return WireJSONResponse({"status": "ok", "committed": state.writer.committed,
                                 "viewers": len(state.hub), "ready": ready})

    @router.get("/readyz", responses=NOT_READY)
    async def readyz(request: Request) -> Any:
        """Readiness: can this server store now? 503 with ``reason`` when it cannot."""
        ready, reason, checks = _readiness(request).status()
        body: dict[str, Any] = {"status": "ready" if ready else "not ready", "ready": ready}
        if not ready:
            body["reason"] = reason
        body["checks"] = {name: {"ok": c.ok, "detail": c.detail} for name, c in checks.items()}
        body["conditions"] = [condition_json(c) for c in _board(request).open(scope="server")]
        return WireJSONResponse(body, status_code=200 if ready else 503)

    return router


def add_condition_routes(router: APIRouter) -> None:
    """Add ``/conditions`` and ``/runs/{id}/conditions`` to the ``/api`` router."""

    @router.get("/conditions")
    async def get_conditions(request: Request, scope: Literal["server", "run"] | None = None,
                             run: str | None = None,
                             state: Literal["open", "resolved"] | None = None) -> Any:
        """Conditions: server trouble (``scope=server``) and trainers' delivery trouble
        (``scope=run``); open ones first (critical first), then the latest resolved."""
        found = _listed(_board(request), scope, run, state)
        return WireJSONResponse({"conditions": [condition_json(c) for c in found]})

    @router.get("/runs/{run_id}/conditions")
    def get_run_conditions(run_id: RunId, request: Request,
                           state: Literal["open", "resolved"] | None = None) -> Any:
        """The run's conditions (delivery trouble of its trainers), open ones first."""
        row = request.app.state.store.run(run_id)
        if row is None:
            raise HTTPException(404, f"no run with id {run_id}")
        found = _listed(_board(request), "run", row.name, state)
        return WireJSONResponse({"conditions": [condition_json(c, run_id) for c in found]})


def _listed(board: Conditions, scope: Literal["server", "run"] | None, run: str | None,
            state: str | None) -> list[Condition]:
    found: list[Condition] = []
    if state in (None, "open"):
        found += board.open(scope, run)
    if state in (None, "resolved"):
        found += board.resolved(scope, run)
    return found


def _readiness(request: Request) -> Readiness:
    return request.app.state.readiness  # type: ignore[no-any-return]


def _board(request: Request) -> Conditions:
    return request.app.state.conditions.board  # type: ignore[no-any-return]
