"""Read-only REST API over the store: runs, series, clip events, alerts, health.

Every response is JSON in which NaN and ±Inf are the strings "NaN", "Infinity", "-Infinity".
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request

from trainvitals.server.security import presented_token, token_ok
from trainvitals.server.store import Store
from trainvitals.server.wire_json import WireJSONResponse

__all__ = ["MAX_POINTS", "build_router"]

MAX_POINTS = 200_000  # per series per request; ask again with start= for more


def _store(request: Request) -> Store:
    return request.app.state.store  # type: ignore[no-any-return]


def _viewer_allowed(request: Request) -> None:
    if not token_ok(request.app.state.settings.view_token, presented_token(request)):
        raise HTTPException(401, "missing or wrong view token")


StoreDep = Annotated[Store, Depends(_store)]


def build_router() -> APIRouter:
    """The /api routes; each answers from the store on a worker thread."""
    router = APIRouter(prefix="/api", default_response_class=WireJSONResponse,
                       dependencies=[Depends(_viewer_allowed)])

    @router.get("/runs")
    def list_runs(store: StoreDep) -> Any:
        """Every run, newest first, with status, progress and open alerts by severity."""
        return WireJSONResponse({"runs": store.runs()})

    @router.get("/runs/{run_id}")
    def get_run(run_id: int, store: StoreDep) -> Any:
        """One run and the series it has."""
        run = store.run(run_id)
        if run is None:
            raise HTTPException(404, f"no run with id {run_id}")
        return WireJSONResponse({"run": run, "series": store.series_list(run_id)})

    @router.get("/runs/{run_id}/series")
    def get_series(
        run_id: int, store: StoreDep, name: Annotated[list[str], Query(min_length=1)],
        rank: int | None = None, start: int | None = None, end: int | None = None,
        limit: Annotated[int, Query(ge=1, le=MAX_POINTS)] = MAX_POINTS,
    ) -> Any:
        """Points of the named series (one entry per series and rank) within [start, end]."""
        _require_run(store, run_id)
        found = [s for n in name for s in store.series(run_id, n, rank=rank, start=start,
                                                       end=end, limit=limit)]
        return WireJSONResponse({"run_id": run_id, "series": found})

    @router.get("/runs/{run_id}/clips")
    def get_clips(run_id: int, store: StoreDep, start: int | None = None,
                  end: int | None = None,
                  limit: Annotated[int, Query(ge=1, le=MAX_POINTS)] = 10_000) -> Any:
        """Clip events: raw value, threshold, action, reason and components."""
        _require_run(store, run_id)
        return WireJSONResponse({"run_id": run_id,
                                 "clips": store.clips(run_id, start=start, end=end, limit=limit)})

    @router.get("/alerts")
    def get_alerts(store: StoreDep, run: str | None = None, state: str | None = None) -> Any:
        """Alerts, newest first; filter by run name and state (open / resolved)."""
        if state not in (None, "open", "resolved"):
            raise HTTPException(422, "state must be 'open' or 'resolved'")
        return WireJSONResponse({"alerts": store.alerts(run=run, state=state)})

    return router


def _require_run(store: Store, run_id: int) -> None:
    if store.run(run_id) is None:
        raise HTTPException(404, f"no run with id {run_id}")
