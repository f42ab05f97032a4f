"""A 1,000,000-step run in headless Chromium, and exported HTML reports opened offline (the
hostile-named short run's, and the long run's: thinned, with its spike).

The long run is written straight into a real SQLite file (the real write path for a million
``Step`` records would take minutes): a few real records create the run and its series, then
the points are bulk-inserted and their block summaries rebuilt. One step holds a spike 1e6
times the loss; M4 downsampling must put it on the chart in the initial full view, and zooming
must fetch every point of the range.
"""

from __future__ import annotations

import json
import math
import sqlite3
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.sync.client import connect

from trainvitals.protocol import Batch, ClipEvent, Record, RunStart, Step, TensorStats, encode
from trainvitals.server import ServerThread, Settings, SQLiteStore
from trainvitals.server.store.sqlite.blocks import rebuild

TIMEOUT_MS = 60_000
STEPS = 1_000_000
SPIKE_STEP, SPIKE = 654_321, 1.0e6
XSS = "<img src=x onerror=alert(1)>"


def loss(step: int) -> float:
    """A noisy falling loss with one spike."""
    if step == SPIKE_STEP:
        return SPIKE
    return 1.0 + 1.0 / (1 + step / 10_000) + (step * 7919 % 101) / 2000


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int, int]]:
    """A server over a store holding the long run and a short XSS-named run (ids returned)."""
    data = tmp_path_factory.mktemp("long")
    settings = Settings(port=0, data_dir=data, ingest_token="i" * 16, log_alerts=False)
    store = SQLiteStore(settings.db_path)
    store.open()
    store.write([RunStart(run="million", session="m", time=1.0),
                 Step(run="million", session="m", seq=1, step=0, time=1.0, loss=loss(0))])
    short: list[Record] = [RunStart(run=XSS, session="x", time=1.0, config={XSS: XSS})]
    for i in range(8):
        stats = TensorStats(count=4, nan=1 if i == 5 else 0, posinf=0, neginf=0, min=-i - 1.0,
                            max=i + 1.0, mean=0.0, absmax=i + 1.0)
        short.append(Step(run=XSS, session="x", seq=i + 1, step=i, time=2.0 + i,
                          loss=math.nan if i == 5 else 2.0 - i / 10, components={XSS: 1.0},
                          tensors={XSS: stats},
                          clip=ClipEvent(50.0, 10.0, "zeroed", "above_threshold", {XSS: 50.0})
                          if i == 6 else None))
    long_id = next(r.id for r in store.runs() if r.name == "million")
    store.close()
    with closing(sqlite3.connect(settings.db_path)) as conn, conn:
        (series_id,) = conn.execute("SELECT id FROM series WHERE run_id=? AND name='loss'",
                                    (long_id,)).fetchone()
        conn.executemany("INSERT OR REPLACE INTO points VALUES (?, ?, ?)",
                         ((series_id, s, loss(s)) for s in range(STEPS)))
        rebuild(conn, [series_id])  # the block summaries that the store keeps with its writes
        conn.execute("UPDATE runs SET last_step=? WHERE id=?", (STEPS - 1, long_id))
    with ServerThread(settings) as srv:
        with connect(f"{srv.ws_url}/ws/ingest", additional_headers={
                "Authorization": f"Bearer {settings.ingest_token}"}, open_timeout=10,
                proxy=None) as ws:  # the short run goes the real way: alerts are judged
            ws.send(encode(Batch(tuple(short))))
            assert json.loads(ws.recv(timeout=10))["type"] == "ack"
        runs = httpx.get(f"{srv.http_url}/api/runs", timeout=30).json()["runs"]
        yield srv.http_url, long_id, next(r["id"] for r in runs if r["name"] == XSS)


@pytest.fixture
def page(browser: Any) -> Iterator[tuple[Any, list[str]]]:
    context = browser.new_context(viewport={"width": 1600, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.on("dialog", lambda d: (problems.append(f"dialog {d.message}"), d.dismiss()))
    yield page, problems
    context.close()


def loss_trace(pg: Any) -> dict[str, list[Any]]:
    result: dict[str, list[Any]] = pg.evaluate(
        """() => window.trainvitals.settled().then(() => {
             const t = document.getElementById('chart-loss').data.find(t => t.meta === 's:loss#0');
             return {x: Array.from(t.x), y: Array.from(t.y)}; })""")
    return result


@pytest.mark.browser
@pytest.mark.slow
def test_a_million_step_run_shows_its_single_spike_and_zooms_to_every_point(
        server: tuple[str, int, int], page: tuple[Any, list[str]]) -> None:
    url, long_id, _ = server
    pg, problems = page
    pg.goto(f"{url}/#run={long_id}")
    pg.wait_for_selector(f"#run-view[data-state='ready'][data-run-id='{long_id}']")
    assert pg.evaluate("window.trainvitals.downsampled") is True
    full = loss_trace(pg)
    # The initial full view: a few points per pixel column, the spike among them.
    assert 1000 < len(full["x"]) <= 4 * 4000
    assert full["x"][0] == 0 and full["x"][-1] == STEPS - 1
    assert full["y"][full["x"].index(SPIKE_STEP)] == SPIKE
    assert max(full["y"]) == SPIKE

    # Zooming re-fetches the range at full resolution: every step is there.
    pg.evaluate(f"Plotly.relayout('chart-loss', {{'xaxis.range': [{SPIKE_STEP - 300}, "
                f"{SPIKE_STEP + 300}]}})")
    pg.wait_for_function("() => window.trainvitals.refetches >= 1")
    zoomed = loss_trace(pg)
    assert zoomed["x"] == list(range(SPIKE_STEP - 300, SPIKE_STEP + 301))
    assert zoomed["y"][300] == SPIKE and zoomed["y"][0] == loss(SPIKE_STEP - 300)
    # ... and the other charts followed the zoom.
    assert pg.evaluate("document.getElementById('chart-grad')._fullLayout.xaxis.range") == [
        SPIKE_STEP - 300, SPIKE_STEP + 300]

    # Back to everything (a double-click does this): thinned again, spike still there.
    pg.evaluate("Plotly.relayout('chart-loss', {'xaxis.autorange': true})")
    pg.wait_for_function("() => window.trainvitals.refetches >= 2")
    again = loss_trace(pg)
    assert len(again["x"]) <= 4 * 4000 and again["y"][again["x"].index(SPIKE_STEP)] == SPIKE
    assert problems == []


def open_report(browser: Any, url: str, run_id: int, tmp_path: Path) -> tuple[Any, Any, list[str]]:
    """The run's exported report, saved and opened from disk in an offline browser context;
    (context, page, problems: errors, dialogs and any request that is not for a file)."""
    response = httpx.get(f"{url}/api/runs/{run_id}/report.html", timeout=120)
    assert response.status_code == 200
    report = tmp_path / f"report-{run_id}.html"
    report.write_bytes(response.content)
    context = browser.new_context(offline=True)  # self-contained: nothing may be fetched
    pg = context.new_page()
    pg.set_default_timeout(TIMEOUT_MS)
    problems: list[str] = []
    pg.on("pageerror", lambda e: problems.append(str(e)))
    pg.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    pg.on("dialog", lambda d: (problems.append(f"dialog {d.message}"), d.dismiss()))
    pg.on("request", lambda r: None if r.url.startswith(("file:", "blob:"))
          else problems.append(f"request {r.url}"))
    pg.goto(report.as_uri())
    pg.wait_for_selector("#run-view[data-state='ready']")
    return context, pg, problems


@pytest.mark.browser
def test_the_exported_report_renders_offline_with_names_as_text(
        server: tuple[str, int, int], browser: Any, tmp_path: Path) -> None:
    url, _, short_id = server
    context, pg, problems = open_report(browser, url, short_id, tmp_path)
    try:
        pg.evaluate("window.trainvitals.settled()")
        assert pg.locator(".js-plotly-plot").count() == 3  # loss, gradients, the tensor
        assert pg.locator("#run-view h2").inner_text() == XSS
        assert pg.locator("#config th").inner_text() == XSS
        assert pg.evaluate("document.querySelectorAll('img').length") == 0
        names = pg.evaluate("""() => [...document.querySelectorAll('.js-plotly-plot')]
            .flatMap(el => el.data.map(t => t.name))""")
        assert f"loss/{XSS}" in pg.locator(".legendtext").all_text_contents()
        assert "NaN" in names and "loss guard fired" in names
        pg.wait_for_selector("#health[data-level='critical']")  # asked for apart from the charts
        assert "NaN/Inf in" in pg.locator("#health").inner_text()
        pg.wait_for_timeout(200)  # time for a (wrongly) injected handler to run
    finally:
        context.close()
    assert problems == []


@pytest.mark.browser
@pytest.mark.slow
def test_the_million_step_runs_report_is_thinned_and_keeps_its_spike(
        server: tuple[str, int, int], browser: Any, tmp_path: Path) -> None:
    url, long_id, _ = server
    context, pg, problems = open_report(browser, url, long_id, tmp_path)
    try:
        assert pg.evaluate("window.trainvitals.downsampled") is True
        full = loss_trace(pg)
        assert 1000 < len(full["x"]) <= 4 * 2000 + 8  # REPORT_BUCKETS M4 columns at most
        assert full["x"][0] == 0 and full["x"][-1] == STEPS - 1
        assert full["y"][full["x"].index(SPIKE_STEP)] == SPIKE == max(full["y"])
    finally:
        context.close()
    assert problems == []
