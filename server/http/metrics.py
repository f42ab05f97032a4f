"""Prometheus metrics for the people who run the server: ``GET /metrics``.

Everything is read at scrape time from the objects that already count it (the writer, the hub,
the store and its files), so ingest pays nothing for metrics. Each app has its own
``CollectorRegistry``: there is no global state, and tests build as many apps as they like.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import APIRouter
from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from trainvitals.server.alerts.conditions import KINDS, Conditions
from trainvitals.server.ingest.deliveries import DeliveryReports
from trainvitals.server.ingest.readiness import Readiness
from trainvitals.server.ingest.storage import FreeSpace
from trainvitals.server.ingest.writer import Writer
from trainvitals.server.live.hub import Hub
from trainvitals.server.security import presented_token, token_ok
from trainvitals.server.store import Store

__all__ = ["CONTENT_TYPE", "Health", "ServerMetrics", "build_router", "store_bytes"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Every reason a frame is refused: the writer's, then the decoder's codes (always exported,
# zeros included, so a rule such as `increase(...[5m]) > 0` has a series to watch).
REFUSALS = ("storage_floor", "commit_failed", "limit_exceeded", "malformed", "invalid",
            "too_large", "unsupported_version")


@dataclass
class Health:
    """What the metrics read of the server's health: readiness, free space, the conditions,
    the trainers' delivery reports and the frames the endpoint refused undecoded."""

    readiness: Readiness | None = None
    space: FreeSpace | None = None
    conditions: Conditions | None = None
    reports: DeliveryReports | None = None
    bad_frames: Counter[str] = field(default_factory=Counter)


def store_bytes(db_path: Path) -> int:
    """Bytes on disk of the SQLite file and its WAL (what the volume must hold)."""
    total = 0
    for path in (db_path, db_path.with_name(db_path.name + "-wal")):
        with suppress(FileNotFoundError):
            total += path.stat().st_size
    return total


class ServerMetrics(Collector):
    """The server's metrics; ``producer()`` wraps each trainer connection to count it."""

    def __init__(self, writer: Writer, hub: Hub, store: Store,
                 disk_bytes: Callable[[], int],
                 relay_counts: Callable[[], Mapping[str, int]] | None = None,
                 health: Health | None = None) -> None:
        self._writer, self._hub, self._store, self._disk_bytes = writer, hub, store, disk_bytes
        self._relay_counts = relay_counts  # replicas on PostgreSQL only
        self._health = health or Health()
        self.producers = 0
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)
        ProcessCollector(registry=self.registry)  # memory, CPU, open files of this process

    @contextmanager
    def producer(self) -> Iterator[None]:
        """Count a trainer connection while the block runs."""
        self.producers += 1
        try:
            yield
        finally:
            self.producers -= 1

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric (call from a worker thread: it
        reads the store)."""
        return generate_latest(self.registry)

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily(
            "trainvitals_ingest_records", "Records committed to the store (steps, run starts "
            "and ends; duplicates not counted).", value=self._writer.committed)
        yield CounterMetricFamily(
            "trainvitals_ingest_values", "Series values in committed steps.",
            value=self._writer.committed_values)
        yield GaugeMetricFamily("trainvitals_producers_connected",
                                "Trainer connections on /ws/ingest.", value=self.producers)
        yield GaugeMetricFamily("trainvitals_viewers_connected",
                                "Browsers following live updates on /ws/live.",
                                value=len(self._hub))
        yield self._open_alerts()
        yield self._open_incidents()
        yield self._incident_changes()
        errors = CounterMetricFamily(
            "trainvitals_rule_errors", "Steps on which an alert rule raised (it found nothing "
            "there; the first error of each rule is logged).", labels=["rule"])
        for rule, n in sorted(self._writer.rule_errors.items()):
            errors.add_metric([rule], n)
        yield errors
        yield CounterMetricFamily(
            "trainvitals_incident_errors", "Steps whose alerts the incident engine could not "
            "group (stored and alerted all the same; the first 10 are logged).",
            value=self._writer.incident_errors)
        yield GaugeMetricFamily("trainvitals_store_bytes",
                                "Bytes the store takes on disk: the SQLite file plus its "
                                "write-ahead log, or the PostgreSQL tables with their indexes.",
                                value=self._disk_bytes())
        if self._relay_counts is not None:
            yield self._relay()
        yield from self._storing()
        yield from self._conditions()
        yield from self._deliveries()

    def _storing(self) -> Iterator[Metric]:
        """Whether the server can store, and what refuses frames."""
        h = self._health
        if h.readiness is not None:
            ready, _, checks = h.readiness.status()
            yield GaugeMetricFamily("trainvitals_ready", "1 while /readyz says ready (every "
                                    "check below passes), else 0.", value=int(ready))
            family = GaugeMetricFamily("trainvitals_ready_check", "Each readiness check: 1 "
                                       "passing, 0 failing (see /readyz for why).",
                                       labels=["check"])
            for name, check in checks.items():
                family.add_metric([name], int(check.ok))
            yield family
        space = h.space.last if h.space is not None else None
        if space is not None and space.free >= 0:
            yield GaugeMetricFamily("trainvitals_disk_free_bytes", "Bytes free on the data "
                                    "directory's filesystem (SQLite).", value=space.free)
            yield GaugeMetricFamily("trainvitals_disk_floor_bytes", "Below this many free "
                                    "bytes new records are refused (min_free_bytes / "
                                    "min_free_percent).", value=space.floor)
        yield CounterMetricFamily("trainvitals_commits_failed", "Commits (and readiness "
                                  "probes) that raised: nothing of them was stored.",
                                  value=self._writer.failed_commits)
        refused = CounterMetricFamily(
            "trainvitals_frames_refused", "Ingest frames refused, by reason: storage_floor "
            "(free space below the floor), commit_failed, limit_exceeded, or the decoder's "
            "code (malformed, invalid, too_large, unsupported_version).", labels=["reason"])
        counts = Counter(self._writer.refused) + Counter(h.bad_frames)
        for reason in REFUSALS:
            refused.add_metric([reason], counts[reason])
        yield refused

    def _conditions(self) -> Iterator[Metric]:
        if self._health.conditions is None:
            return
        family = GaugeMetricFamily(
            "trainvitals_open_conditions", "Open conditions (server or delivery trouble, "
            "docs/operations.md) by scope, kind and severity.",
            labels=["scope", "kind", "severity"])
        counts = Counter((c.kind, c.severity) for c in self._health.conditions.open())
        for kind, (scope, _) in KINDS.items():
            for severity in ("warning", "critical"):
                family.add_metric([scope, kind, severity], counts[(kind, severity)])
        yield family

    def _deliveries(self) -> Iterator[Metric]:
        if self._health.reports is None:
            return
        t = self._health.reports.totals()
        yield GaugeMetricFamily("trainvitals_plugin_streams_reporting", "Streams of connected "
                                "trainers that report their delivery.", value=t.streams)
        yield GaugeMetricFamily("trainvitals_plugin_spool_records", "Records in the spools "
                                "of connected trainers that the server has not stored.",
                                value=t.records)
        yield GaugeMetricFamily("trainvitals_plugin_spool_bytes", "Bytes those records take "
                                "in the trainers' spools (as they reported).", value=t.bytes)
        yield GaugeMetricFamily("trainvitals_plugin_oldest_unacked_seconds", "Age of the "
                                "oldest record a connected trainer holds unacknowledged.",
                                value=t.oldest_age)
        yield GaugeMetricFamily("trainvitals_plugin_dropped_records", "Records connected "
                                "trainers report they dropped (full queue or spool).",
                                value=t.dropped)

    def _relay(self) -> CounterMetricFamily:
        family = CounterMetricFamily(
            "trainvitals_relay_messages", "Live messages between replicas (LISTEN/NOTIFY), by "
            "event: sent, received, spilled (too big for a NOTIFY), dropped (full queue or a "
            "failed send), resyncs_sent, reconnects (of the LISTEN connection).",
            labels=["event"])
        assert self._relay_counts is not None
        for event, n in sorted(self._relay_counts().items()):
            family.add_metric([event], n)
        return family

    def _incident_changes(self) -> CounterMetricFamily:
        family = _incident_counter()
        for change in ("opened", "escalated", "resolved"):
            for severity in ("warning", "critical"):
                family.add_metric([change, severity],
                                  self._writer.incident_changes[(change, severity)])
        return family

    def _open_incidents(self) -> GaugeMetricFamily:
        family = GaugeMetricFamily("trainvitals_open_incidents",
                                   "Open (or escalated) incidents by run and severity.",
                                   labels=["run", "severity"])
        counts = Counter((i.run, i.severity) for i in self._store.incidents(state="open"))
        for (run, severity), n in sorted(counts.items()):
            family.add_metric([run, severity], n)
        return family

    def _open_alerts(self) -> GaugeMetricFamily:
        family = GaugeMetricFamily("trainvitals_open_alerts", "Open alerts by run and severity.",
                                   labels=["run", "severity"])
        counts = Counter((a.run, a.severity) for a in self._store.alerts(state="open"))
        for (run, severity), n in sorted(counts.items()):
            family.add_metric([run, severity], n)
        return family


def _incident_counter() -> CounterMetricFamily:
    return CounterMetricFamily(
        "trainvitals_incidents", "Incident changes since the server started: opened, "
        "escalated (severity rose) and resolved, by severity. Page on opened critical.",
        labels=["change", "severity"])


def build_router(metrics: ServerMetrics, view_token: str | None) -> APIRouter:
    """``GET /metrics``; behind the view token when one is set (Prometheus sends it as
    ``authorization: {credentials: TOKEN}`` in its scrape config)."""
    router = APIRouter()

    @router.get("/metrics", include_in_schema=False)
    def prometheus(request: Request) -> Response:
        if not token_ok(view_token, presented_token(request)):
            return PlainTextResponse("missing or wrong view token", status_code=401)
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    return router
