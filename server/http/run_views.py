"""REST views derived from a run's data: liveness, health in words, HTML report and CSV.

``add_routes`` hangs them on the ``/api`` router of ``rest.py`` (which checks the view token).
"""

from __future__ import annotations

import re
import time
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, StreamingResponse

from trainvitals.protocol.wire_json import to_wire
from trainvitals.server.http.params import RunId
from trainvitals.server.http.responses import WireJSONResponse
from trainvitals.server.store import RunRow, Store
from trainvitals.server.views.export import csv_chunks
from trainvitals.server.views.health import Health, gather, live_status, summarize
from trainvitals.server.views.report import html_report, report_data

__all__ = ["add_routes", "health_json", "run_json"]


def run_json(run: RunRow, request: Request) -> dict[str, Any]:
    """A run as the API shows it: the stored row plus ``silent``.

    ``silent`` is true while the run is running and its latest record (trainer clock,
    ``updated``) is older than ``silent_after_s`` by the server's clock.
    """
    body: dict[str, Any] = to_wire(run)
    settings = request.app.state.settings
    body["silent"] = live_status(run, time.time(), settings.silent_after_s) == "silent"
    return body


def health_json(run_id: int, health: Health) -> dict[str, Any]:
    """A run's health as the API shows it."""
    return {"run_id": run_id, "level": health.level, "summary": health.summary,
            "sentences": health.sentences}


def add_routes(router: APIRouter) -> None:
    """Add ``/runs/{id}/health``, ``/runs/{id}/report.html`` and ``/runs/{id}/export.csv``."""

    @router.get("/runs/{run_id}/health")
    def get_health(run_id: RunId, request: Request) -> Any:
        """The run's health in plain words: ``level`` (ok/warning/critical) and sentences."""
        store, run = _run(request, run_id)
        settings = request.app.state.settings
        health = summarize(gather(store, run, time.time(), settings.silent_after_s))
        return WireJSONResponse(health_json(run_id, health))

    @router.get("/runs/{run_id}/report.html", response_class=HTMLResponse)
    def get_report(run_id: RunId, request: Request) -> Any:
        """A self-contained HTML report (the page's run view, plotly.js and the run's data
        inside; opens offline), as a download."""
        store, run = _run(request, run_id)
        now, after = time.time(), request.app.state.settings.silent_after_s
        health = summarize(gather(store, run, now, after))
        data = report_data(store, run, run_body=run_json(run, request),
                           health_body=health_json(run_id, health), made=now)
        # Served with the server's own strict CSP (script-src 'self', set on every answer),
        # under which the report's inline scripts do not run: it is a download
        # (Content-Disposition: attachment), never shown from this URL. Opened from disk, the
        # file's own <meta> CSP applies instead: its two inline scripts by hash, blob: modules,
        # no requests at all.
        return HTMLResponse(html_report(data), headers=_download(run, "html"))

    @router.get("/runs/{run_id}/export.csv",  # documented as CSV in the OpenAPI schema
                responses={200: {"content": {"text/csv": {"schema": {"type": "string"}}}}})
    def get_csv(run_id: RunId, request: Request) -> Any:
        """Every point of the run as CSV, streamed (see ``export``)."""
        store, run = _run(request, run_id)
        return StreamingResponse(csv_chunks(store, run), media_type="text/csv; charset=utf-8",
                                 headers=_download(run, "csv"))


def _run(request: Request, run_id: int) -> tuple[Store, RunRow]:
    store: Store = request.app.state.store
    run = store.run(run_id)
    if run is None:
        raise HTTPException(404, f"no run with id {run_id}")
    return store, run


def _download(run: RunRow, suffix: str) -> dict[str, str]:
    """Save-as headers; the file name keeps only safe characters of the run name."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", run.name).strip("._") or f"run-{run.id}"
    return {"Content-Disposition": f'attachment; filename="{stem[:80]}.{suffix}"'}
