"""Live chart updates in headless Chromium: appended, never redrawn (frontend/charts.js).

A step that arrives live is drawn by appending to the SVG paths plotly drew (the fast path),
not by a plotly redraw; what only plotly draws (the NaN/Inf edge markers) still goes through
plotly; and plotly's own state catches up with every point (``settled()``). Calls are counted,
never timed (bench/latency.py measures the latency).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import torch

from trainvitals import Monitor
from trainvitals.server import ServerThread, Settings

INGEST_TOKEN = "ingest-token-live"
VIEW_TOKEN = "view-token-live"
FIRST = 10  # steps stored before the page opens
LIVE = 30  # steps 0 .. LIVE-1 in all once the finite live steps are in
NAN_STEP = LIVE  # then one step with a NaN loss
TIMEOUT_MS = 45_000

# Counts the plotly calls the page makes from now on (the page calls window.Plotly.<name>).
COUNT_CALLS_JS = """() => {
  const P = window.Plotly;
  window.__calls = {};
  for (const name of ['react', 'newPlot', 'extendTraces', 'addTraces', 'redraw']) {
    const f = P[name];
    P[name] = function (...args) {
      window.__calls[name] = (window.__calls[name] ?? 0) + 1;
      return f.apply(this, args);
    };
  }
}"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    settings = Settings(port=0, data_dir=tmp_path_factory.mktemp("data"),
                        ingest_token=INGEST_TOKEN, view_token=VIEW_TOKEN, log_alerts=False)
    with ServerThread(settings) as srv:
        yield srv


def log(mon: Monitor, step: int, loss: float) -> None:
    mon.tensor("act", torch.linspace(-1.0, 1.0, 64) * (1.0 + 0.1 * math.sin(step)))
    mon.log_step(step, loss=loss, loss_used=loss, grad_norm=0.5 + 0.01 * step, lr=1e-3)


def lengths(pg: Any, chart: str) -> dict[str, int]:
    return pg.evaluate("id => window.trainvitals.traceLengths(id)", chart)  # type: ignore[no-any-return]


@pytest.mark.browser
def test_live_steps_are_appended_without_redrawing_and_markers_stay(
        server: ServerThread, browser: Any, tmp_path: Any) -> None:
    mon = Monitor("live-fast", server=server.ws_url, token=INGEST_TOKEN, spool=tmp_path / "spool")
    for step in range(FIRST):
        log(mon, step, 2.0 - 0.01 * step)
    assert mon.flush(30)
    runs = httpx.get(f"{server.http_url}/api/runs", params={"token": VIEW_TOKEN}, timeout=10).json()
    rid = next(r["id"] for r in runs["runs"] if r["name"] == "live-fast")

    context = browser.new_context(viewport={"width": 1600, "height": 1000})
    pg = context.new_page()
    pg.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    pg.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.goto(f"{server.http_url}/?token={VIEW_TOKEN}#run={rid}")
    pg.wait_for_selector(f"#run-view[data-state='ready'][data-run-id='{rid}']")
    charts = ["chart-loss", "chart-grad", "chart-tensor-act"]
    pg.wait_for_function("ids => ids.every(id => window.trainvitals.draws(id) === 1)", arg=charts)
    pg.evaluate("window.trainvitals.settled()")
    assert lengths(pg, "chart-loss")["s:loss#0"] == FIRST
    pg.evaluate(COUNT_CALLS_JS)

    # Finite live steps, one frame each: every point arrives, appended by the fast path.
    for step in range(FIRST, LIVE):
        log(mon, step, 2.0 - 0.01 * step)
        assert mon.flush(30)
    for chart, key in [("chart-loss", "s:loss#0"), ("chart-grad", "s:grad_norm#0"),
                       ("chart-tensor-act", "s:tensor/act/max#0")]:
        pg.wait_for_function(
            "([id, key, n]) => (window.trainvitals.traceLengths(id)[key] || 0) >= n",
            arg=[chart, key, LIVE])
    calls = pg.evaluate("window.__calls")
    assert calls.get("react", 0) == 0 and calls.get("newPlot", 0) == 0, calls
    for chart in charts:
        assert pg.evaluate("id => window.trainvitals.draws(id)", chart) == 1
        updates = pg.evaluate("id => window.trainvitals.updates(id)", chart)
        assert updates["fast"] >= 1, (chart, updates)  # drawn by appending to the SVG
    # Fewer plotly updates than live steps reached the charts: most were appended.
    assert calls.get("extendTraces", 0) < (LIVE - FIRST) * len(charts), calls
    loss = pg.evaluate("""() => document.getElementById('chart-loss').data
        .find(t => t.meta === 's:loss#0')""")
    assert loss["x"] == list(range(LIVE))
    assert loss["y"] == pytest.approx([2.0 - 0.01 * s for s in range(LIVE)])

    # A NaN loss still gets its edge marker, drawn by plotly (the fast path leaves markers be).
    full_before = pg.evaluate("window.trainvitals.updates('chart-loss').full")
    log(mon, NAN_STEP, float("nan"))
    assert mon.flush(30)
    pg.wait_for_function("""s => (document.getElementById('chart-loss').data
        .find(t => t.meta === 'edge:nan')?.x ?? []).includes(s)""", arg=NAN_STEP)
    pg.evaluate("window.trainvitals.settled()")
    assert pg.evaluate("window.trainvitals.updates('chart-loss').full") > full_before
    drawn_markers = pg.evaluate("""() => document.querySelectorAll(
        '#chart-loss .scatterlayer .trace' + document.getElementById('chart-loss')._fullData
          .find(t => t.meta === 'edge:nan').uid + ' .points path.point').length""")
    assert drawn_markers == 1
    assert lengths(pg, "chart-loss")["s:loss#0"] == LIVE + 1

    # settled(): plotly's own state (hover, zoom) holds every point, and the appended paths
    # are gone (plotly drew those points itself).
    pg.evaluate("window.trainvitals.settled()")
    assert pg.evaluate("document.querySelectorAll('.tv-live').length") == 0
    held = pg.evaluate("""ids => ids.map(id => {
        const gd = document.getElementById(id);
        return gd.data.map((t, i) => [t.x.length, gd.calcdata[i].length])
          .filter((_, i) => gd._fullData[i].visible === true || gd.data[i].x.length === 0); })""",
        charts)
    for chart, traces in zip(charts, held, strict=True):
        for n, in_calc in traces:
            assert in_calc == max(n, 1), (chart, traces)  # plotly keeps one stub for no points
    assert pg.evaluate("window.__calls").get("react", 0) == 0
    assert errors == []
    mon.close()
    context.close()
