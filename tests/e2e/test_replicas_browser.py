"""Two server replicas on one PostgreSQL database; headless Chromium shows replica B.

A real ``Monitor`` streams to replica A only. B's dashboard, open on the run, must draw every
point A ingested, once, and show A's alert once (its alerts panel) and A's incident once (its
card and one toast), all through B's live websocket fed by the relay. Run with
``pytest -m browser``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

from tests.support.browser import launch, require_chromium
from trainvitals import Monitor
from trainvitals.server import ServerThread, Settings

INGEST_TOKEN = "ingest-token-replicas"
TIMEOUT_MS = 45_000  # generous: waits end as soon as they can
FIRST, NAN_STEP, LAST = 10, 25, 40  # steps before the page opens; the NaN; the marker


@pytest.fixture
def replicas(postgres_url: str, tmp_path: Path) -> Iterator[tuple[ServerThread, ServerThread]]:
    def settings(name: str) -> Settings:
        return Settings(port=0, data_dir=tmp_path / name, database_url=postgres_url,
                        ingest_token=INGEST_TOKEN, log_alerts=False)

    with ServerThread(settings("a")) as a, ServerThread(settings("b")) as b:
        yield a, b


@pytest.fixture
def page() -> Iterator[Any]:
    sync_api = pytest.importorskip("playwright.sync_api")
    require_chromium()
    with sync_api.sync_playwright() as pw:
        chromium = launch(pw)
        context = chromium.new_context(viewport={"width": 1600, "height": 1000})
        pg = context.new_page()
        pg.set_default_timeout(TIMEOUT_MS)
        errors: list[str] = []
        pg.on("pageerror", lambda e: errors.append(str(e)))
        yield pg
        chromium.close()
        assert errors == []


def train(mon: Monitor, steps: range) -> None:
    for step in steps:
        loss = torch.tensor(float("nan") if step == NAN_STEP else 2.0 / (1 + step))
        mon.log_step(step, loss=loss, grad_norm=torch.tensor(0.5))
    assert mon.flush(20), mon.stats()


def loss_steps(pg: Any) -> list[int]:
    steps: list[int] = pg.evaluate(
        """() => window.trainvitals.settled().then(() => Array.from(
             document.getElementById('chart-loss').data.find(t => t.meta === 's:loss#0').x))""")
    return steps


@pytest.mark.browser
def test_points_alerts_and_incidents_ingested_on_a_appear_once_on_b_s_dashboard(
        replicas: tuple[ServerThread, ServerThread], page: Any) -> None:
    a, b = replicas
    mon = Monitor("across-replicas", server=a.ws_url, token=INGEST_TOKEN, spool=None)
    try:
        train(mon, range(FIRST))
        runs = httpx.get(f"{b.http_url}/api/runs", timeout=10).json()["runs"]
        (rid,) = [r["id"] for r in runs if r["name"] == "across-replicas"]  # B reads A's run

        page.goto(f"{b.http_url}/#run={rid}")
        page.wait_for_selector(f"#run-view[data-state='ready'][data-run-id='{rid}']")
        assert loss_steps(page) == list(range(FIRST))  # from B's REST API

        train(mon, range(FIRST, LAST + 1))  # live, on A only; step LAST is the marker
        page.wait_for_function(
            """last => (document.getElementById('chart-loss').data || [])
                 .some(t => t.meta === 's:loss#0' && t.x.includes(last))""", arg=LAST)
    finally:
        mon.close(timeout=5)

    # A's messages reach B in order: once the marker is drawn, everything before it arrived.
    assert loss_steps(page) == list(range(LAST + 1))  # every point, once
    assert page.evaluate("window.trainvitals.pointsReceived") == LAST + 1 - FIRST
    assert page.evaluate("window.trainvitals.draws('chart-loss')") == 1  # no resync reload

    alerts = httpx.get(f"{b.http_url}/api/alerts", params={"run": "across-replicas"},
                       timeout=10).json()["alerts"]
    assert ("nonfinite", "loss") in {(x["rule"], x["series"]) for x in alerts}
    items = page.locator("#alerts li[data-rule='nonfinite'][data-series='loss']")
    assert items.count() == 1 and f"step {NAN_STEP}" in items.inner_text()
    assert page.locator("#alerts li").count() == len(alerts)
    (incident,) = httpx.get(f"{b.http_url}/api/runs/{rid}/incidents",
                            timeout=10).json()["incidents"]
    card = page.locator("#incidents article.incident")
    assert card.count() == 1 and card.get_attribute("data-incident") == incident["id"]
    assert card.locator(".incident-headline").inner_text() == incident["headline"]
    assert page.evaluate("window.trainvitals.toasts") == 1  # one per incident, not per alert
    assert page.locator(f".toast[data-incident='{incident['id']}']").count() == 1
