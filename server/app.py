"""``create_app(settings)``: the whole server, built from one Settings object.

No module-level state: each app owns its store, writer, alert engine and hub, so tests build
as many apps as they like on temporary databases.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, WebSocket
from starlette.requests import Request
from starlette.responses import Response

from trainvitals.server.alerts import AlertConfig, AlertEngine, Threshold
from trainvitals.server.hub import Hub
from trainvitals.server.ingest import serve_ingest
from trainvitals.server.live import serve_viewer
from trainvitals.server.rest import build_router as rest_router
from trainvitals.server.settings import Settings
from trainvitals.server.sinks import AlertSink, BrowserSink, LogSink
from trainvitals.server.sqlite_store import SQLiteStore
from trainvitals.server.static import build_router as static_router
from trainvitals.server.store import Store
from trainvitals.server.wire_json import WireJSONResponse
from trainvitals.server.writer import Writer

__all__ = ["create_app"]

SECURITY_HEADERS = {
    # plotly.js injects <style> elements, hence 'unsafe-inline' for styles only; no inline script.
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; "
    "style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


def create_app(settings: Settings | None = None, *, store: Store | None = None) -> FastAPI:
    """A ready-to-serve ASGI app. ``store`` defaults to SQLite in ``settings.data_dir``."""
    settings = settings or Settings()
    store = store or SQLiteStore(settings.db_path)
    hub = Hub(settings.viewer_queue)
    engine = AlertEngine(_alert_config(settings))
    sinks: list[AlertSink] = [BrowserSink(hub)]
    if settings.log_alerts:
        sinks.append(LogSink())
    writer = Writer(store, engine, hub, sinks, batch_records=settings.writer_batch)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await writer.start()
        try:
            yield
        finally:
            await writer.stop()

    app = FastAPI(title="trainvitals", version=_version(), lifespan=lifespan,
                  default_response_class=WireJSONResponse)
    app.state.settings, app.state.store, app.state.hub, app.state.writer = (
        settings, store, hub, writer)
    app.include_router(rest_router())
    app.include_router(static_router())

    @app.get("/healthz")
    def healthz() -> Any:
        """Liveness: the writer's commit count and connected viewers."""
        return WireJSONResponse({"status": "ok", "committed": writer.committed,
                                 "viewers": len(hub)})

    @app.websocket("/ws/ingest")
    async def ingest(ws: WebSocket) -> None:
        await serve_ingest(ws, settings, writer)

    @app.websocket("/ws/live")
    async def live(ws: WebSocket) -> None:
        await serve_viewer(ws, settings, hub)

    @app.middleware("http")
    async def security_headers(request: Request, call_next: Any) -> Response:
        response: Response = await call_next(request)
        response.headers.update(SECURITY_HEADERS)
        return response

    return app


def _alert_config(settings: Settings) -> AlertConfig:
    return AlertConfig(stall_steps=settings.stall_steps, resolve_after=settings.resolve_after,
                       thresholds=tuple(Threshold.parse(t) for t in settings.thresholds))


def _version() -> str:
    from trainvitals import __version__

    return __version__
