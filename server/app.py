"""``create_app(settings)``: the whole server, built from one Settings object.

No module-level state: each app owns its store, writer, alert engine and hub, so tests build
as many apps as they like on temporary databases.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, WebSocket
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from trainvitals.server.alerts import AlertConfig, AlertEngine, Threshold
from trainvitals.server.http.health import build_router as health_router
from trainvitals.server.http.metrics import Health, ServerMetrics, store_bytes
from trainvitals.server.http.metrics import build_router as metrics_router
from trainvitals.server.http.responses import WireJSONResponse
from trainvitals.server.http.rest import build_router as rest_router
from trainvitals.server.http.static import build_router as static_router
from trainvitals.server.ingest.deliveries import DeliveryReports
from trainvitals.server.ingest.endpoint import serve_ingest
from trainvitals.server.ingest.readiness import Readiness
from trainvitals.server.ingest.retention import Retention
from trainvitals.server.ingest.storage import FreeSpace
from trainvitals.server.ingest.writer import Writer
from trainvitals.server.live.hub import Hub
from trainvitals.server.live.viewers import serve_viewer
from trainvitals.server.notify.conditions import ConditionFeed
from trainvitals.server.notify.sinks import AlertSink, BrowserSink, ConditionSink, LogSink
from trainvitals.server.notify.webhook import WebhookSink
from trainvitals.server.security import SECURITY_HEADERS, redact_tokens_in_logs
from trainvitals.server.settings import Settings
from trainvitals.server.store import Store
from trainvitals.server.store.limits import Limits
from trainvitals.server.store.sqlite.store import SQLiteStore

if TYPE_CHECKING:
    from trainvitals.server.live.relay import ReplicaRelay

__all__ = ["create_app"]

def create_app(settings: Settings | None = None, *, store: Store | None = None) -> FastAPI:
    """A ready-to-serve ASGI app. ``store`` defaults to PostgreSQL at ``settings.database_url``
    if set, else SQLite in ``settings.data_dir``."""
    settings = settings or Settings()
    redact_tokens_in_logs()
    store = store or _default_store(settings)
    hub = Hub(settings.viewer_queue)
    engine = AlertEngine(_alert_config(settings))
    browser, terminal = BrowserSink(hub), LogSink() if settings.log_alerts else None
    webhooks = _webhooks(settings)
    sinks: list[AlertSink] = [browser, *([terminal] if terminal else []), *webhooks]
    space = _free_space(settings)
    writer = Writer(store, engine, hub, sinks, batch_records=settings.writer_batch, space=space)
    retention = Retention(store, writer, retain_days=settings.retain_days,
                          retain_bytes=settings.retain_bytes,
                          interval=settings.retention_interval)
    relay = _replica_relay(settings, hub)
    told: list[ConditionSink] = [browser, *([terminal] if terminal else []), *webhooks]
    conditions = ConditionFeed(told)
    reports = DeliveryReports(conditions, backlog_warn_s=settings.backlog_warn_s)
    readiness = Readiness(writer, store, conditions, space=space,
                          relay=None if relay is None else relay.health,
                          interval=settings.health_interval, ticks=[reports.tick])
    writer.observers += [readiness, reports]
    bad_frames: Counter[str] = Counter()
    metrics = ServerMetrics(writer, hub, store, _disk_bytes(store, settings),
                            None if relay is None else lambda: dataclasses.asdict(relay.stats),
                            Health(readiness, space, conditions.board, reports, bad_frames))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await writer.start()
        if relay is not None:
            await relay.start()
        for hook in webhooks:
            await hook.start()
        await retention.start()
        await readiness.start()
        try:
            yield
        finally:
            await readiness.stop()
            await retention.stop()
            await writer.stop()  # delivers the last alert changes to the sinks ...
            for hook in webhooks:
                await hook.stop()  # ... which the webhooks then post
            if relay is not None:
                await relay.stop()  # after the writer: its last messages reach the replicas

    # No /docs or /redoc: those pages load scripts from a CDN and run inline script, which
    # the Content-Security-Policy forbids; the schema stays at /openapi.json.
    app = FastAPI(title="trainvitals", version=_version(), lifespan=lifespan,
                  default_response_class=WireJSONResponse, docs_url=None, redoc_url=None)
    app.state.settings, app.state.store, app.state.hub, app.state.writer = (
        settings, store, hub, writer)
    app.state.metrics, app.state.retention, app.state.webhooks = metrics, retention, webhooks
    app.state.relay, app.state.readiness, app.state.conditions = relay, readiness, conditions
    app.state.reports, app.state.space = reports, space
    if settings.metrics:
        app.include_router(metrics_router(metrics, settings.view_token))
    app.include_router(health_router())
    app.include_router(rest_router())
    app.include_router(static_router())

    @app.websocket("/ws/ingest")
    async def ingest(ws: WebSocket) -> None:
        with metrics.producer():
            await serve_ingest(ws, settings, writer, reports, bad_frames)

    @app.websocket("/ws/live")
    async def live(ws: WebSocket) -> None:
        await serve_viewer(ws, settings, hub)

    @app.middleware("http")
    async def security_headers(request: Request, call_next: Any) -> Response:
        response: Response = await call_next(request)
        response.headers.update(SECURITY_HEADERS)
        return response

    @app.exception_handler(Exception)
    async def crashed(request: Request, exc: Exception) -> Response:
        # Runs outside the middleware above (Starlette's outermost layer), so it sets the
        # headers itself; uvicorn still logs the traceback.
        return PlainTextResponse("Internal Server Error", status_code=500,
                                 headers=SECURITY_HEADERS)

    return app


def _default_store(settings: Settings) -> Store:
    limits = Limits(max_runs=settings.max_runs, max_series_per_run=settings.max_series_per_run)
    if settings.database_url is None:
        return SQLiteStore(settings.db_path, limits=limits)
    # Imported only here: psycopg is needed only by those who configure PostgreSQL.
    from trainvitals.server.store.postgres.store import PostgresStore

    return PostgresStore(settings.database_url, limits=limits)


def _free_space(settings: Settings) -> FreeSpace | None:
    """The floor under the data directory's free space; with PostgreSQL the database's disk is
    not ours to measure."""
    if settings.database_url is not None:
        return None
    return FreeSpace(settings.data_dir.absolute(), min_free_bytes=settings.min_free_bytes,
                     min_free_percent=settings.min_free_percent)


def _disk_bytes(store: Store, settings: Settings) -> Callable[[], int]:
    """What /metrics reports as the store's size: the bytes its files take on disk."""
    disk_bytes: Callable[[], int] | None = getattr(store, "disk_bytes", None)
    return disk_bytes or (lambda: store_bytes(settings.db_path))


def _replica_relay(settings: Settings, hub: Hub) -> ReplicaRelay | None:
    """On PostgreSQL, live messages go to and come from every replica on that database."""
    if settings.database_url is None:
        return None
    from trainvitals.server.live.relay import ReplicaRelay  # psycopg: only if configured

    return ReplicaRelay(settings.database_url, hub)


def _webhooks(settings: Settings) -> list[WebhookSink]:
    if not (settings.webhook_urls or settings.slack_webhook_urls):
        return []
    return [WebhookSink(json_urls=settings.webhook_urls, slack_urls=settings.slack_webhook_urls,
                        min_severity=settings.webhook_min_severity,
                        per_minute=settings.webhook_per_minute, retries=settings.webhook_retries)]


def _alert_config(settings: Settings) -> AlertConfig:
    return AlertConfig(stall_steps=settings.stall_steps, resolve_after=settings.resolve_after,
                       thresholds=tuple(Threshold.parse(t) for t in settings.thresholds),
                       headroom_warning=settings.headroom_warning,
                       headroom_critical=settings.headroom_critical,
                       headroom_horizon=settings.headroom_horizon,
                       amp_skip_steps=settings.amp_skip_steps,
                       amp_scale_floor=settings.amp_scale_floor)


def _version() -> str:
    from trainvitals import __version__

    return __version__
