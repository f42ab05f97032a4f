"""Read-only REST API over the store: runs, series, clip events, incidents, alerts, health.

Every response is JSON in which NaN and ±Inf are the strings "NaN", "Infinity", "-Infinity".
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request

from trainvitals.server.http.health import add_condition_routes
from trainvitals.server.http.params import Rank, RunId, StepBound
from trainvitals.server.http.responses import WireJSONResponse
from trainvitals.server.http.run_views import add_routes as add_run_views
from trainvitals.server.http.run_views import run_json
from trainvitals.server.security import presented_token, token_ok
from trainvitals.server.store import Store
from trainvitals.server.store.downsample import MAX_BUCKETS, for_width
from trainvitals.server.views.incidents import incident_json
from trainvitals.server.views.ranks import bad_ranks

__all__ = ["MAX_POINTS", "build_router"]

MAX_POINTS = 200_000  # per series per request; ask again with start= for more
# Documented in the OpenAPI schema, so that clients (and schemathesis) know every answer.
ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "missing or wrong view token (when the server has one)"},
    404: {"description": "no run with that id"},
}


def _store(request: Request) -> Store:
    return request.app.state.store  # type: ignore[no-any-return]


def _viewer_allowed(request: Request) -> None:
    if not token_ok(request.app.state.settings.view_token, presented_token(request)):
        raise HTTPException(401, "missing or wrong view token")


StoreDep = Annotated[Store, Depends(_store)]


def build_router() -> APIRouter:
    """The /api routes; each answers from the store on a worker thread."""
    router = APIRouter(prefix="/api", default_response_class=WireJSONResponse,
                       dependencies=[Depends(_viewer_allowed)], responses=ERRORS)

    @router.get("/runs")
    def list_runs(store: StoreDep, request: Request) -> Any:
        """Every run, newest first, with status, progress and open alerts by severity."""
        return WireJSONResponse({"runs": [run_json(r, request) for r in store.runs()]})

    @router.get("/runs/{run_id}")
    def get_run(run_id: RunId, store: StoreDep, request: Request) -> Any:
        """One run, the series it has, and which rank went bad first (``first_bad``, null
        while no rank has a critical alert; ``bad_ranks``: every such rank, in that order)."""
        run = store.run(run_id)
        if run is None:
            raise HTTPException(404, f"no run with id {run_id}")
        ranked = bad_ranks(store.alerts(run=run.name))
        return WireJSONResponse({"run": run_json(run, request),
                                 "series": store.series_list(run_id),
                                 "first_bad": ranked[0] if ranked else None,
                                 "bad_ranks": ranked})

    @router.get("/runs/{run_id}/series")
    def get_series(
        run_id: RunId, store: StoreDep, name: Annotated[list[str], Query(min_length=1)],
        rank: Rank = None, start: StepBound = None, end: StepBound = None,
        limit: Annotated[int, Query(ge=1, le=MAX_POINTS)] = MAX_POINTS,
        buckets: Annotated[int | None, Query(ge=1, le=MAX_BUCKETS)] = None,
    ) -> Any:
        """Points of the named series (one entry per series and rank) within [start, end];
        with ``buckets`` (chart width in pixels), long ranges come downsampled with M4."""
        _require_run(store, run_id)
        if buckets is not None:
            return WireJSONResponse({"run_id": run_id, "series": [
                {**vars(data), "downsampled": thinned} for n in name  # NaN/Inf: at render
                for data, thinned in for_width(store, run_id, n, rank=rank, start=start,
                                               end=end, buckets=buckets)]})
        found = [s for n in name for s in store.series(run_id, n, rank=rank, start=start,
                                                       end=end, limit=limit)]
        return WireJSONResponse({"run_id": run_id, "series": found})

    @router.get("/runs/{run_id}/clips")
    def get_clips(run_id: RunId, store: StoreDep, start: StepBound = None,
                  end: StepBound = None,
                  limit: Annotated[int, Query(ge=1, le=MAX_POINTS)] = 10_000) -> Any:
        """Clip events: raw value, threshold, action, reason and components."""
        _require_run(store, run_id)
        return WireJSONResponse({"run_id": run_id,
                                 "clips": store.clips(run_id, start=start, end=end, limit=limit)})

    @router.get("/alerts")
    def get_alerts(store: StoreDep, run: str | None = None,
                   state: Literal["open", "resolved"] | None = None) -> Any:
        """Alerts, newest first; filter by run name and state (open / resolved)."""
        return WireJSONResponse({"alerts": store.alerts(run=run, state=state)})

    @router.get("/incidents")
    def get_incidents(store: StoreDep, run: str | None = None,
                      state: Literal["open", "escalated", "resolved"] | None = None) -> Any:
        """Incidents (one per root cause, with their evidence), newest run first, then by
        number; ``state=open`` includes escalated ones."""
        return WireJSONResponse({"incidents": _incidents(store, run, state)})

    @router.get("/runs/{run_id}/incidents")
    def get_run_incidents(run_id: RunId, store: StoreDep) -> Any:
        """The run's incidents with their evidence, by onset."""
        run = store.run(run_id)
        if run is None:
            raise HTTPException(404, f"no run with id {run_id}")
        found = sorted(store.incidents(run=run.name), key=lambda i: (i.onset_step, i.number))
        return WireJSONResponse({"incidents": [incident_json(i, run.id) for i in found]})

    @router.get("/runs/{run_id}/origins")
    def get_origins(run_id: RunId, store: StoreDep) -> Any:
        """Where non-finite values started (per rank, by the step they started at)."""
        _require_run(store, run_id)
        return WireJSONResponse({"run_id": run_id, "origins": store.origins(run_id)})

    add_run_views(router)  # health, report.html, export.csv
    add_condition_routes(router)  # server and delivery trouble

    return router


def _require_run(store: Store, run_id: int) -> None:
    if store.run(run_id) is None:
        raise HTTPException(404, f"no run with id {run_id}")


def _incidents(store: Store, run: str | None, state: str | None) -> list[dict[str, Any]]:
    ids: dict[str, int | None] = {}
    out = []
    for incident in store.incidents(run=run, state=state):
        if incident.run not in ids:
            ids[incident.run] = store.run_id(incident.run)
        out.append(incident_json(incident, ids[incident.run]))
    return out
