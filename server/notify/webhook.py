"""Webhook sinks: incidents and conditions opened, escalated and resolved, POSTed as JSON or
Slack messages.

One post per incident change, never per finding: the alerts behind an incident travel inside
it as its evidence. Conditions (server or delivery trouble, ``alerts.conditions``) travel the
same way, in the same list and the same shape, told apart by ``scope``. ``deliver`` runs on
the writer's path, so it never waits: it filters the incident changes (opened, escalated,
resolved, at or above a severity; other updates are left out) and appends them to a bounded
queue per URL. One asyncio task per URL posts them with ``httpx``:

* rate limit: a token bucket of ``per_minute`` posts per URL; changes that arrive while the
  bucket is empty are coalesced into the next post instead of being sent one by one;
* retries: network errors, 5xx, 408 and 429 are retried with exponential backoff (a 429's
  ``Retry-After`` is honoured); other 4xx mean the request itself is wrong and are not.

Delivery is at least once per accepted post: a receiver that stores a body and then fails to
answer gets it again on retry.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx

from trainvitals.server.alerts import AlertChange
from trainvitals.server.alerts.conditions import ConditionChange
from trainvitals.server.alerts.incidents import IncidentChange
from trainvitals.server.views.conditions import condition_json
from trainvitals.server.views.incidents import incident_json

__all__ = ["RateLimiter", "WebhookSink", "json_payload", "slack_payload"]

log = logging.getLogger("trainvitals.server")
Format = Literal["json", "slack"]
_RANK = {"warning": 0, "critical": 1}
_RETRY_STATUS = {408, 429}
SLACK_MAX_BLOCKS = 40  # Slack allows 50 blocks per message; leave room for the overflow note
Change = IncidentChange | ConditionChange


def json_payload(changes: Sequence[Change]) -> dict[str, Any]:
    """The generic body: every change with the full incident — headline, remedy, evidence
    (non-finite floats as strings) — or condition, in the same shape (``scope`` says which:
    ``run`` for incidents and run conditions, ``server`` for the server's own)."""
    return {"source": "trainvitals", "incidents": [_entry(c) for c in changes]}


def _entry(change: Change) -> dict[str, Any]:
    if isinstance(change, ConditionChange):
        return {"change": change.kind, **condition_json(change.condition)}
    return {"change": change.kind, **incident_json(change.incident)}


def slack_payload(changes: Sequence[Change]) -> dict[str, Any]:
    """A Slack incoming-webhook body: ``text`` (also the notification) plus one block each."""
    lines = [_line(c) for c in changes]
    blocks: list[dict[str, Any]] = [
        {"type": "section", "text": {"type": "mrkdwn", "text": line}}
        for line in lines[:SLACK_MAX_BLOCKS]]
    if len(lines) > SLACK_MAX_BLOCKS:
        blocks.append({"type": "context", "elements": [
            {"type": "mrkdwn", "text": f"…and {len(lines) - SLACK_MAX_BLOCKS} more"}]})
    return {"text": "\n".join(lines), "blocks": blocks}


def _line(change: Change) -> str:
    if isinstance(change, ConditionChange):
        return _condition_line(change)
    i = change.incident
    where = f"`{i.run}` #{i.number}"
    if change.kind == "resolved":
        return (f"RESOLVED {where} @ step {i.resolved_step} ({i.evidence_count} finding(s)): "
                f"{i.headline}")
    escalated = " (escalated)" if change.kind == "escalated" else ""
    tried = f" — try: {i.remedy}" if i.remedy else ""
    return f"{i.severity.upper()}{escalated} {where} @ step {i.onset_step}: {i.headline}{tried}"


def _condition_line(change: ConditionChange) -> str:
    c = change.condition
    where = "server" if c.scope == "server" else f"`{c.run}`"
    if change.kind == "resolved":
        return f"RESOLVED {where} {c.kind}: {c.headline}"
    escalated = " (escalated)" if change.kind == "escalated" else ""
    return f"{c.severity.upper()}{escalated} {where} {c.kind}: {c.headline} — try: {c.remedy}"


class RateLimiter:
    """A token bucket: ``per_period`` tokens, refilled evenly over ``period`` seconds."""

    def __init__(self, per_period: int, period: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._capacity, self._rate, self._clock = float(per_period), per_period / period, clock
        self._tokens, self._stamp = float(per_period), clock()

    def delay(self) -> float:
        """Seconds until a token is available (0 when one is)."""
        self._refill()
        return 0.0 if self._tokens >= 1 else (1 - self._tokens) / self._rate

    def take(self) -> None:
        """Spend one token (may go negative if called without waiting for ``delay``)."""
        self._refill()
        self._tokens -= 1

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self._capacity, self._tokens + (now - self._stamp) * self._rate)
        self._stamp = now


@dataclass(eq=False)
class _Target:
    url: str
    format: Format
    limiter: RateLimiter
    pending: deque[Change]
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    posted: int = 0  # accepted posts
    failed: int = 0  # posts given up on
    dropped: int = 0  # changes lost to a full queue


class WebhookSink:
    """``AlertSink`` that posts to webhooks in the background; ``start``/``stop`` with the app."""

    def __init__(self, *, json_urls: Sequence[str] = (), slack_urls: Sequence[str] = (),
                 min_severity: str = "warning", per_minute: int = 20, retries: int = 4,
                 backoff: float = 1.0, period: float = 60.0, queue_size: int = 1000,
                 batch: int = 50, timeout: float = 10.0) -> None:
        formats: list[tuple[str, Format]] = [(u, "json") for u in json_urls]
        formats += [(u, "slack") for u in slack_urls]
        self._targets = [_Target(url, fmt, RateLimiter(per_minute, period),
                                 deque(maxlen=queue_size)) for url, fmt in formats]
        self._min, self._retries, self._backoff = _RANK[min_severity], retries, backoff
        self._batch, self._timeout = batch, timeout
        self._tasks: list[asyncio.Task[None]] = []
        self._client: httpx.AsyncClient | None = None
        self._closing = False

    def deliver(self, changes: Sequence[AlertChange],
                incidents: Sequence[IncidentChange] = ()) -> None:
        self._queue([c for c in incidents if c.kind != "updated"
                     and _RANK[c.incident.severity] >= self._min])

    def deliver_conditions(self, changes: Sequence[ConditionChange]) -> None:
        """Queue condition openings, escalations and resolutions, as for incidents. A
        condition may fall back to a warning before it resolves: its resolution is sent to
        whoever was told it had escalated."""
        self._queue([c for c in changes if c.kind != "updated" and max(
            _RANK[c.condition.severity],
            _RANK["critical"] if c.kind == "resolved" and c.condition.escalated_at else 0,
        ) >= self._min])

    def _queue(self, wanted: Sequence[Change]) -> None:
        for target in self._targets if wanted else ():
            room = (target.pending.maxlen or 0) - len(target.pending)
            target.dropped += max(0, len(wanted) - room)  # the deque drops the oldest
            target.pending.extend(wanted)
            target.wake.set()

    def stats(self) -> dict[str, dict[str, int]]:
        """Per URL: accepted posts, posts given up, changes dropped, changes waiting."""
        return {t.url: {"posted": t.posted, "failed": t.failed, "dropped": t.dropped,
                        "pending": len(t.pending)} for t in self._targets}

    async def start(self) -> None:
        """Start one posting task per URL (call on the server's event loop)."""
        self._client = httpx.AsyncClient(timeout=self._timeout, follow_redirects=False)
        self._tasks = [asyncio.create_task(self._work(t), name=f"webhook {_shown(t.url)}")
                       for t in self._targets]

    async def stop(self, timeout: float = 15.0) -> None:
        """Post what is queued (within ``timeout`` seconds), then close the client."""
        self._closing = True
        for target in self._targets:
            target.wake.set()
        if self._tasks:
            _, late = await asyncio.wait(self._tasks, timeout=timeout)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        lost = sum(len(t.pending) for t in self._targets)
        if lost:
            log.warning("webhooks: %d incident change(s) not delivered before shutdown", lost)
        if self._client is not None:
            await self._client.aclose()

    async def _work(self, target: _Target) -> None:
        while True:
            if not target.pending:
                if self._closing:
                    return
                target.wake.clear()
                await target.wake.wait()
                continue
            await asyncio.sleep(target.limiter.delay())  # meanwhile more changes coalesce
            target.limiter.take()
            batch = [target.pending.popleft()
                     for _ in range(min(self._batch, len(target.pending)))]
            await self._post(target, batch)

    async def _post(self, target: _Target, batch: list[Change]) -> None:
        assert self._client is not None, "start() first"
        body = slack_payload(batch) if target.format == "slack" else json_payload(batch)
        for attempt in range(self._retries + 1):
            wait = self._backoff * 2**attempt
            try:
                response = await self._client.post(target.url, json=body)
            except httpx.HTTPError as exc:
                problem = f"{type(exc).__name__}: {exc}"
            else:
                if response.is_success:
                    target.posted += 1
                    return
                problem = f"HTTP {response.status_code}"
                if response.status_code < 500 and response.status_code not in _RETRY_STATUS:
                    break  # the receiver refuses this request; sending it again will not help
                wait = max(wait, _retry_after(response))
            if attempt < self._retries:
                log.info("webhook %s: %s; retry in %.1f s", _shown(target.url), problem, wait)
                await asyncio.sleep(wait)
        target.failed += 1
        log.warning("webhook %s: gave up on %d incident change(s): %s", _shown(target.url),
                    len(batch), problem)


def _shown(url: str) -> str:
    """The URL without its path: webhook paths are secrets (Slack's carry the token)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}/…"


def _retry_after(response: httpx.Response) -> float:
    try:
        return min(float(response.headers.get("retry-after", 0)), 300.0)
    except ValueError:  # an HTTP date: not worth parsing, back off normally
        return 0.0
