"""Webhook sinks against a real HTTP receiver on 127.0.0.1: payloads, retries, rate limit."""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from websockets.sync.client import connect

from trainvitals.protocol import Batch, RunStart, Step, encode
from trainvitals.server import ServerThread, Settings
from trainvitals.server.alerts import Alert
from trainvitals.server.alerts.incidents import Evidence, Incident, IncidentChange
from trainvitals.server.notify.webhook import RateLimiter, WebhookSink, json_payload, slack_payload

TOKEN = "ingest-token-for-webhook-tests"


class Receiver:
    """A real HTTP server that records every POST and answers from a script of statuses."""

    def __init__(self, statuses: list[int] | None = None) -> None:
        self.statuses = list(statuses or [])  # answers for the first requests; then 200
        self.requests: list[tuple[int, Any]] = []  # (status answered, JSON body)
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with receiver._lock:
                    status = receiver.statuses.pop(0) if receiver.statuses else 200
                    receiver.requests.append((status, body))
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/hook"
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,),
                                        daemon=True)
        self._thread.start()

    def accepted(self) -> list[Any]:
        with self._lock:
            return [body for status, body in self.requests if 200 <= status < 300]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class Recorded(logging.Handler):
    """Keeps every log record it is handed."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def receiver() -> Iterator[Callable[..., Receiver]]:
    made: list[Receiver] = []

    def make(statuses: list[int] | None = None) -> Receiver:
        made.append(Receiver(statuses))
        return made[-1]

    yield make
    for r in made:
        r.close()


def alert(run: str = "r1", *, rule: str = "nonfinite", severity: str = "critical",
          state: str = "open", step: int = 3, **kw: Any) -> Alert:
    return Alert(run=run, rank=0, rule=rule, series="loss", severity=severity,  # type: ignore[arg-type]
                 state=state, first_step=step, opened_step=step, last_step=step,  # type: ignore[arg-type]
                 resolved_step=kw.get("resolved_step"), count=kw.get("count", 1),
                 message=kw.get("message", "loss is NaN"), details=kw.get("details", {}))


def incident(run: str = "r1", *, severity: str = "critical", state: str = "open",
             number: int = 1, **kw: Any) -> Incident:
    """One incident holding one alert as its evidence."""
    evidence = Evidence.of(alert(run, severity=severity, **{k: v for k, v in kw.items()
                                                            if k in ("details", "rule")}))
    return Incident(run=run, number=number, kind=kw.get("kind", "nonfinite_loss"),
                    severity=severity, state=state, onset_step=3, rank=0,  # type: ignore[arg-type]
                    opened_step=3, last_step=kw.get("last_step", 3),
                    resolved_step=kw.get("resolved_step"),
                    headline=kw.get("headline", "the loss went NaN at step 3"),
                    remedy=kw.get("remedy", "look at the loss"), evidence=(evidence,))


def opened(**kw: Any) -> IncidentChange:
    return IncidentChange("opened", incident(**kw))


async def wait_for(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    import asyncio

    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "condition not met in time"
        await asyncio.sleep(0.01)


def test_slack_payload_has_text_and_one_block_per_change() -> None:
    resolved = IncidentChange("resolved", incident(state="resolved", resolved_step=9))
    escalated = IncidentChange("escalated", incident(run="x", number=2))
    body = slack_payload([opened(run="pi3"), resolved, escalated])
    assert body["text"] == (
        "CRITICAL `pi3` #1 @ step 3: the loss went NaN at step 3 — try: look at the loss\n"
        "RESOLVED `r1` #1 @ step 9 (1 finding(s)): the loss went NaN at step 3\n"
        "CRITICAL (escalated) `x` #2 @ step 3: the loss went NaN at step 3 — try: look at the "
        "loss")
    assert body["blocks"] == [
        {"type": "section", "text": {"type": "mrkdwn", "text": body["text"].split("\n")[0]}},
        {"type": "section", "text": {"type": "mrkdwn", "text": body["text"].split("\n")[1]}},
        {"type": "section", "text": {"type": "mrkdwn", "text": body["text"].split("\n")[2]}}]


def test_json_payload_carries_the_incident_its_evidence_and_nonfinite_details() -> None:
    body = json_payload([opened(details={"value": math.nan, "limit": math.inf})])
    assert body["source"] == "trainvitals"
    (entry,) = body["incidents"]
    assert entry["change"] == "opened"
    assert (entry["run"], entry["number"], entry["severity"]) == ("r1", 1, "critical")
    assert (entry["headline"], entry["remedy"]) == ("the loss went NaN at step 3",
                                                    "look at the loss")
    assert (entry["id"], entry["evidence_count"], entry["ranks"]) == ("r1#1", 1, [0])
    (evidence,) = entry["evidence"]
    assert evidence["rule"] == "nonfinite"
    assert evidence["details"] == {"value": "NaN", "limit": "Infinity"}
    json.dumps(body, allow_nan=False)  # strict JSON


def test_rate_limiter_is_a_token_bucket() -> None:
    now = [100.0]
    limiter = RateLimiter(2, period=60.0, clock=lambda: now[0])
    assert limiter.delay() == 0.0
    limiter.take()
    limiter.take()
    assert limiter.delay() == pytest.approx(30.0)  # one token every 30 s
    now[0] += 15.0
    assert limiter.delay() == pytest.approx(15.0)
    now[0] += 15.0
    assert limiter.delay() == 0.0
    now[0] += 1000.0  # refills to capacity, not beyond
    limiter.take()
    limiter.take()
    assert limiter.delay() > 0


async def test_failed_post_is_retried_and_accepted_once(receiver: Callable[..., Receiver]) -> None:
    r = receiver([503])
    sink = WebhookSink(slack_urls=[r.url], backoff=0.05)
    await sink.start()
    sink.deliver([], [opened(run="retry-run")])
    await sink.stop()
    assert [status for status, _ in r.requests] == [503, 200]
    (body,) = r.accepted()
    assert body["text"] == ("CRITICAL `retry-run` #1 @ step 3: the loss went NaN at step 3 — "
                            "try: look at the loss")
    assert sink.stats()[r.url] == {"posted": 1, "failed": 0, "dropped": 0, "pending": 0}


async def test_client_errors_are_not_retried_and_logs_keep_the_url_secret(
        receiver: Callable[..., Receiver]) -> None:
    r = receiver([400])
    sink = WebhookSink(json_urls=[r.url + "/T000/B000/secret"], backoff=0.05)
    logger, seen = logging.getLogger("trainvitals.server"), Recorded()
    logger.addHandler(seen)  # our own handler: the CLI may have stopped propagation to root
    try:
        await sink.start()
        sink.deliver([], [opened()])
        await sink.stop()
    finally:
        logger.removeHandler(seen)
    assert [status for status, _ in r.requests] == [400]
    assert sink.stats()[r.url + "/T000/B000/secret"]["failed"] == 1
    (record,) = [rec for rec in seen.records if "gave up" in rec.getMessage()]
    assert record.getMessage() == ("webhook http://127.0.0.1/…: gave up on 1 incident change(s): "
                                   "HTTP 400")


async def test_retries_end_after_the_limit(receiver: Callable[..., Receiver]) -> None:
    r = receiver([500, 502, 503])
    sink = WebhookSink(json_urls=[r.url], retries=2, backoff=0.01)
    await sink.start()
    sink.deliver([], [opened()])
    await sink.stop()
    assert [status for status, _ in r.requests] == [500, 502, 503]
    assert sink.stats()[r.url]["failed"] == 1


async def test_only_openings_and_resolutions_at_the_minimum_severity_are_sent(
        receiver: Callable[..., Receiver]) -> None:
    r = receiver()
    sink = WebhookSink(json_urls=[r.url], min_severity="critical")
    await sink.start()
    sink.deliver([], [IncidentChange("updated", incident(last_step=4)),
                      opened(number=2, severity="warning")])
    sink.deliver([], [opened(number=3),
                      IncidentChange("escalated", incident(number=2)),
                      IncidentChange("resolved", incident(number=3, state="resolved",
                                                          resolved_step=8))])
    await sink.stop()
    sent = [(i["change"], i["number"]) for body in r.accepted() for i in body["incidents"]]
    assert sent == [("opened", 3), ("escalated", 2), ("resolved", 3)]


async def test_rate_limited_changes_are_coalesced_into_one_post(
        receiver: Callable[..., Receiver]) -> None:
    r = receiver()
    # one post per 0.3 s: the first goes at once, the next three wait and travel together
    sink = WebhookSink(json_urls=[r.url], per_minute=1, period=0.3)
    await sink.start()
    sink.deliver([], [opened(run="a")])
    await wait_for(lambda: len(r.accepted()) == 1)
    for run in ("b", "c", "d"):
        sink.deliver([], [opened(run=run)])
    await sink.stop()
    posts = [[i["run"] for i in body["incidents"]] for body in r.accepted()]
    assert posts == [["a"], ["b", "c", "d"]]


async def test_a_full_queue_drops_the_oldest_and_counts_them(
        receiver: Callable[..., Receiver]) -> None:
    r = receiver()
    sink = WebhookSink(json_urls=[r.url], queue_size=2)
    sink.deliver([], [opened(run=name) for name in ("a", "b", "c")])  # before start: queued
    await sink.start()
    await sink.stop()
    assert [[i["run"] for i in body["incidents"]] for body in r.accepted()] == [["b", "c"]]
    assert sink.stats()[r.url]["dropped"] == 1


def test_a_critical_incident_reaches_the_receiver_once_with_a_slack_body(
        tmp_path: Path, receiver: Callable[..., Receiver]) -> None:
    """End to end: a trainer's NaN loss → one critical incident → one Slack post, although
    the receiver fails the first attempt and the incident is held for several more steps."""
    r = receiver([500])
    settings = Settings(port=0, data_dir=tmp_path, ingest_token=TOKEN, log_alerts=False,
                        slack_webhook_urls=[r.url], webhook_min_severity="critical")
    server = ServerThread(settings).start()
    try:
        records = [RunStart(run="nan-run", session="s", time=1.0)] + [
            Step(run="nan-run", session="s", seq=i + 1, step=i, time=2.0 + i,
                 loss=math.nan if i >= 3 else 1.0) for i in range(8)]
        with connect(f"{server.ws_url}/ws/ingest", additional_headers={
                "Authorization": f"Bearer {TOKEN}"}, proxy=None) as ws:
            ws.send(encode(Batch(tuple(records))))
            assert json.loads(ws.recv(timeout=10))["seq"] == 8  # committed
    finally:
        server.stop()  # drains the webhook queue (retry included) before it returns
    assert [status for status, _ in r.requests] == [500, 200]
    (body,) = r.accepted()
    assert set(body) == {"text", "blocks"}
    assert body["text"].startswith("CRITICAL `nan-run` #1 @ step 3: the loss went NaN")
    assert body["blocks"][0]["text"] == {"type": "mrkdwn", "text": body["text"]}
