"""The dashboard in headless Chromium against a real server fed by real Monitor runs.

The browser tests (marked ``browser``) run apart from the other tests, since sync Playwright
and pytest-asyncio do not share a process: ``pytest -m browser``. They need Debian's Chromium
at /usr/bin/chromium. The last test needs no browser and runs with the rest. The long-run
(1,000,000 steps) tests are in test_dashboard_long.py; the exported report is held to what this
page draws in tests/server/test_report.py.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from websockets.sync.client import connect

from trainvitals import Monitor
from trainvitals.protocol import Batch, Record, RunStart, Step, encode
from trainvitals.server import ServerThread, Settings

INGEST_TOKEN = "ingest-token-e2e"
VIEW_TOKEN = "view-token-e2e"
CLIP = 10.0
CLIP_FROM = 20  # raw loss jumps above the clip threshold from this step on
NAN_STEP = 30  # the raw loss is NaN at this step
STEPS = 40
FIRST = 15  # steps sent before the page opens; the rest (clips, NaN) stream while it watches
TIMEOUT_MS = 45_000  # generous: CI machines may be busy; waits end as soon as they can
SCREENSHOT = Path("/tmp/dashboard.png")
FRONTEND = Path(__file__).resolve().parents[2] / "frontend"  # the source folder


@dataclass
class Server:
    url: str  # base URL of the dashboard and REST API
    ws: str  # base URL for the trainer plugin

    def get(self, path: str, **params: Any) -> Any:
        response = httpx.get(self.url + path, params={**params, "token": VIEW_TOKEN}, timeout=10)
        response.raise_for_status()
        return response.json()


@dataclass
class PageLog:
    """What the page said that it should not have: console errors, uncaught errors, dialogs."""

    errors: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    settings = Settings(port=0, data_dir=tmp_path_factory.mktemp("data"),
                        ingest_token=INGEST_TOKEN, view_token=VIEW_TOKEN, log_alerts=False)
    with ServerThread(settings) as srv:
        yield Server(srv.http_url, srv.ws_url)


@pytest.fixture
def page(browser: Any) -> Iterator[tuple[Any, PageLog]]:
    context = browser.new_context(viewport={"width": 1600, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    log = PageLog()
    page.on("console", lambda m: log.errors.append(f"console: {m.text}")
            if m.type == "error" else None)
    page.on("pageerror", lambda e: log.errors.append(f"pageerror: {e}"))

    def on_dialog(dialog: Any) -> None:
        log.dialogs.append(f"{dialog.type}: {dialog.message}")
        dialog.dismiss()

    page.on("dialog", on_dialog)
    yield page, log
    context.close()


@pytest.fixture
def monitor(server: Server) -> Iterator[Callable[..., Monitor]]:
    """Makes Monitors for runs on the test server; closes them (quickly) at the end."""
    made: list[Monitor] = []

    def make(run: str, config: dict[str, Any] | None = None) -> Monitor:
        made.append(Monitor(run, server=server.ws, token=INGEST_TOKEN,
                            config={"clip": CLIP} if config is None else config, spool=None))
        return made[-1]

    yield make
    for m in made:
        m.close(timeout=2)


def train(m: Monitor, steps: range, components: tuple[str, str] = ("ce", "kl"),
          flush: bool = True) -> None:
    """Real steps: loss clipped from CLIP_FROM on, NaN at NAN_STEP, zero grads when clipped."""
    for step in steps:
        raw = torch.tensor(2.0 - 0.02 * step + (100.0 if step >= CLIP_FROM else 0.0))
        if step == NAN_STEP:
            raw = torch.tensor(float("nan"))
        used = m.clip_guard(raw, CLIP, {components[0]: raw * 0.75, components[1]: raw * 0.25})
        weights = torch.linspace(-1.0, 1.0, 64) * (1.0 + step / 10)
        m.tensor("logits", weights, feeds_exp=True)
        grad = torch.tensor(0.0) if bool(used == 0) else torch.tensor(1.5 - 0.01 * step)
        m.log_step(step, grad_norm=grad, grad_norm_post=torch.clamp(grad, max=1.0), lr=1e-3)
    if flush:
        assert m.flush(10), m.stats()


def lengths(page: Any, chart: str) -> dict[str, int]:
    result: dict[str, int] = page.evaluate(
        "id => window.trainvitals.settled().then(() => window.trainvitals.traceLengths(id))",
        chart)
    return result


def trace(page: Any, chart: str, key: str) -> dict[str, Any]:
    """x, y and text of one plotly trace of a chart (what plotly holds, not what we sent)."""
    result: dict[str, Any] = page.evaluate(
        """([id, key]) => {
             const t = document.getElementById(id).data.find(t => t.meta === key);
             return t ? {x: Array.from(t.x), y: Array.from(t.y), text: Array.from(t.text || []),
                         name: t.name} : null;
           }""", [chart, key])
    return result


def wait_points(page: Any, chart: str, key: str, n: int) -> None:
    page.wait_for_function(
        """([id, key, n]) => { const t = (document.getElementById(id).data || [])
                                 .find(t => t.meta === key); return t && t.x.length >= n; }""",
        arg=[chart, key, n])


def run_id(server: Server, name: str) -> int:
    return next(r["id"] for r in server.get("/api/runs")["runs"] if r["name"] == name)


def open_critical(server: Server) -> int:
    """Open (or escalated) critical incidents over every run: what the tab title counts."""
    return sum(r["open_incidents"].get("critical", 0) for r in server.get("/api/runs")["runs"])


@pytest.mark.browser
def test_run_list_charts_alerts_and_live_updates(
        server: Server, page: tuple[Any, PageLog], monitor: Callable[[str], Monitor]) -> None:
    pg, log = page
    m = monitor("resnet-clip")
    train(m, range(FIRST))
    rid = run_id(server, "resnet-clip")

    pg.goto(f"{server.url}/?token={VIEW_TOKEN}")
    row = pg.locator(f"#runs tr[data-run-id='{rid}']")
    row.wait_for()
    assert row.locator("td.name").inner_text() == "resnet-clip"
    assert row.get_attribute("data-status") == "running"
    assert row.locator("td.step").inner_text() == str(FIRST - 1)
    expected = next(r for r in server.get("/api/runs")["runs"] if r["id"] == rid)["open_incidents"]
    assert row.locator("[data-severity]").count() == len(expected)
    for severity, count in expected.items():
        assert row.locator(f"[data-severity='{severity}']").inner_text() == str(count)

    row.locator("td.name a").click()
    pg.wait_for_selector(f"#run-view[data-state='ready'][data-run-id='{rid}']")
    assert pg.locator("#run-view h2").inner_text() == "resnet-clip"

    # Every point present at page load is drawn.
    loss = lengths(pg, "chart-loss")
    assert loss["s:loss#0"] == FIRST
    assert loss["s:loss_used#0"] == FIRST
    assert "clip" not in loss, loss  # nothing clipped yet: the marker trace comes live
    assert lengths(pg, "chart-grad")["s:grad_norm#0"] == FIRST

    # Stream the rest while the page watches: every point arrives, appended with
    # extendTraces; a trace that first appears now (the clip markers) is added once.
    train(m, range(FIRST, STEPS))
    wait_points(pg, "chart-loss", "s:loss#0", STEPS)
    wait_points(pg, "chart-loss", "s:loss_used#0", STEPS)
    loss = lengths(pg, "chart-loss")
    assert loss["s:loss#0"] == STEPS and loss["s:loss_used#0"] == STEPS
    assert trace(pg, "chart-loss", "s:loss#0")["x"] == list(range(STEPS))
    assert loss["s:loss/ce#0"] == loss["s:loss/kl#0"] == STEPS
    for chart in ("chart-loss", "chart-grad"):
        keys = pg.evaluate("id => document.getElementById(id).data.map(t => t.meta)", chart)
        assert len(keys) == len(set(keys)), keys
        assert pg.evaluate("id => window.trainvitals.draws(id)", chart) == 1  # never redrawn
    assert pg.evaluate("window.trainvitals.pointsReceived") == STEPS - FIRST

    # Clip events: one marker per finite clipped step, hover says raw/threshold/action/reason.
    clips = trace(pg, "chart-loss", "clip")
    assert clips["x"] == [s for s in range(CLIP_FROM, STEPS) if s != NAN_STEP]
    assert all(y > CLIP for y in clips["y"])
    assert "threshold 10" in clips["text"][0] and "action zeroed" in clips["text"][0]
    assert "reason above_threshold" in clips["text"][0]

    # The NaN loss is a gap in the lines plus NaN markers at the edge, never a vanished point.
    raw = trace(pg, "chart-loss", "s:loss#0")
    assert raw["y"][NAN_STEP] is None
    nan = trace(pg, "chart-loss", "edge:nan")
    assert nan["x"] == [NAN_STEP]  # one marker; its hover lists every NaN series of the step
    head, *lines = nan["text"][0].split("<br>")
    assert head == f"<b>NaN at step {NAN_STEP}</b>"
    assert lines == ["loss (loss guard: nan, action passed)", "loss_used", "loss/ce", "loss/kl"]
    # Zero gradient norms cannot sit on the log axis: bottom-edge markers instead.
    zeros = trace(pg, "chart-grad", "edge:nonpos")
    assert len(zeros["x"]) >= STEPS - CLIP_FROM - 1

    # Alerts panel: the clip warning and the non-finite critical alert, with their steps.
    pg.wait_for_selector("#alerts li[data-rule='nonfinite'][data-severity='critical']")
    nonfinite = pg.locator("#alerts li[data-rule='nonfinite'][data-series='loss']")
    assert f"step {NAN_STEP}" in nonfinite.inner_text()
    clip_alert = pg.locator("#alerts li[data-rule='clip']")
    assert clip_alert.get_attribute("data-severity") == "warning"
    assert clip_alert.get_attribute("data-state") == "open"

    # Health in plain words at the top, from the run's own data and open alerts.
    pg.wait_for_function("() => (document.querySelector('#health p') || {}).textContent"
                         "?.startsWith('Loss clipped to 0 on the last')")
    assert pg.locator("#health").get_attribute("data-level") == "critical"
    assert "gradients are 0; the model is not learning. First clip at step" in (
        pg.locator("#health").inner_text())

    # The watched tensor: a band from min to max with the mean line; no NaN/Inf elements.
    tensor = "chart-tensor-logits"
    wait_points(pg, tensor, "s:tensor/logits/mean#0", STEPS)
    band = pg.evaluate("""id => document.getElementById(id).data
        .filter(t => (t.meta || '').startsWith('s:tensor/logits/'))
        .map(t => [t.meta.split('/')[2], t.fill || null, t.x.length, t.yaxis || 'y'])""", tensor)
    assert band[:3] == [["min#0", None, STEPS, "y"], ["max#0", "tonexty", STEPS, "y"],
                        ["mean#0", None, STEPS, "y"]]  # max fills down to min: the band
    assert {b[0]: b[3] for b in band[3:]} == {"nan#0": "y3", "posinf#0": "y3", "neginf#0": "y3"}
    top = trace(pg, tensor, "s:tensor/logits/max#0")["y"][-1]
    assert top == pytest.approx(1 + (STEPS - 1) / 10)
    assert pg.locator(f"#{tensor}").locator("xpath=..").locator(".chart-extra").inner_text() == (
        "No NaN/Inf elements.")

    # Clicking an alert zooms every chart to its step (and marks it).
    pg.locator("#alerts li[data-rule='nonfinite'][data-series='loss']").click()
    for chart in ("chart-loss", "chart-grad", tensor):
        pg.wait_for_function(
            """([id, step]) => { const l = document.getElementById(id)._fullLayout;
                 const [a, b] = l.xaxis.range; return a <= step && step <= b && b - a < 60
                   && l.shapes.length === 1 && l.shapes[0].x0 === step; }""",
            arg=[chart, NAN_STEP])

    # Exports: the links carry the view token and download the run.
    with pg.expect_download() as download:
        pg.locator("#export-csv").click()
    exported = Path(download.value.path()).read_text()
    assert exported.splitlines()[0].startswith("rank,step,grad_norm,grad_norm_post,loss,")
    assert len(exported.splitlines()) == 1 + STEPS
    assert pg.locator("#export-html").get_attribute("href").endswith(
        f"/api/runs/{rid}/report.html?token={VIEW_TOKEN}")

    # Runs list follows live: last step, then status after the run ends; the title counts
    # critical incidents (one per cause), not the many alerts behind them.
    # (Predicates are functions: a bare expression string would need eval, which the CSP bans.)
    pg.wait_for_function("([id, step]) => document.querySelector(`#runs tr[data-run-id='${id}']"
                         " td.step`).textContent === step", arg=[rid, str(STEPS - 1)])
    m.close()
    pg.wait_for_selector(f"#runs tr[data-run-id='{rid}'][data-status='finished']")
    critical = open_critical(server)
    assert critical >= 1
    pg.wait_for_function("title => document.title === title", arg=f"({critical}) trainvitals")
    row.locator("[data-severity='critical']").wait_for()  # ... as does the runs list
    assert row.locator("[data-severity='critical']").inner_text() == str(
        next(r for r in server.get("/api/runs")["runs"] if r["id"] == rid)["open_incidents"][
            "critical"])

    pg.screenshot(path=str(SCREENSHOT), full_page=True)
    assert log.errors == [] and log.dialogs == []


def ingest(server: Server, records: list[Record]) -> None:
    """Protocol records straight to the ingest websocket (for trainer times in the past)."""
    with connect(f"{server.ws}/ws/ingest", additional_headers={
            "Authorization": f"Bearer {INGEST_TOKEN}"}, open_timeout=10, proxy=None) as ws:
        ws.send(encode(Batch(tuple(records))))
        assert json.loads(ws.recv(timeout=10))["type"] == "ack"


def healthy(m: Monitor, steps: range) -> None:
    """Real steps of a run that learns: falling loss, nothing clipped, nothing non-finite."""
    for step in steps:
        raw = torch.tensor(2.0 / (1 + step))
        m.clip_guard(raw, CLIP, {"ce": raw})
        m.log_step(step, grad_norm=torch.tensor(0.5), lr=1e-3)
    assert m.flush(10), m.stats()


@pytest.mark.browser
def test_a_critical_incident_of_another_run_reaches_the_user(
        server: Server, browser: Any, monitor: Callable[[str], Monitor]) -> None:
    context = browser.new_context(viewport={"width": 1600, "height": 1000})
    context.grant_permissions(["notifications"], origin=server.url)
    pg = context.new_page()
    pg.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    try:
        watched = monitor("watched-healthy")
        healthy(watched, range(10))
        rid = run_id(server, "watched-healthy")
        pg.goto(f"{server.url}/?token={VIEW_TOKEN}#run={rid}")
        pg.wait_for_selector(f"#run-view[data-state='ready'][data-run-id='{rid}']")
        pg.wait_for_selector("#health[data-level='ok']")
        assert pg.locator("#health p").inner_text() == (
            "Healthy: loss 2 → 0.2 over 10 steps; no open alerts.")
        assert pg.locator("#notify").is_hidden()  # permission already granted: nothing to ask
        # The user looks at another window now.
        pg.evaluate("Object.defineProperty(document, 'hasFocus', {value: () => false})")
        before = pg.title()

        bad = monitor("elsewhere-nan")
        for step in range(4):
            raw = torch.tensor(float("nan") if step == 2 else 1.0)
            bad.clip_guard(raw, CLIP, {"ce": raw})
            depth = torch.ones(8)
            if step == 2:
                depth[:3] = float("nan")
            bad.tensor("depth", depth)
            bad.log_step(step, grad_norm=torch.tensor(1.0))
        assert bad.flush(10), bad.stats()
        bad_id = run_id(server, "elsewhere-nan")

        toast = pg.locator(".toast[data-severity='critical'][data-run='elsewhere-nan']")
        toast.wait_for()
        (incident,) = server.get(f"/api/runs/{bad_id}/incidents")["incidents"]
        assert toast.locator(".toast-message").inner_text() == incident["headline"]
        # The step's critical alerts (loss, loss/ce, tensor depth) are one incident: one toast.
        assert len(server.get("/api/alerts", run="elsewhere-nan")["alerts"]) >= 3
        assert pg.locator(".toast[data-severity='critical']").count() == 1
        assert toast.get_attribute("data-incident") == "elsewhere-nan#1"
        pg.wait_for_function("before => document.title !== before", arg=before)
        assert pg.evaluate("window.trainvitals.notifications") == 1  # one per incident
        critical = open_critical(server)
        pg.wait_for_function("title => document.title === title", arg=f"({critical}) trainvitals")

        # The toast leads to the run, whose tensor chart shows the NaN elements.
        toast.locator(".toast-run").click()
        pg.wait_for_selector(f"#run-view[data-state='ready'][data-run-id='{bad_id}']")
        assert pg.locator(".toast[data-severity='critical']").count() == 0
        caption = pg.locator("figure[data-tensor='depth'] .chart-extra")
        caption.wait_for()
        assert caption.inner_text() == (
            "NaN/Inf elements on 1 step(s); latest at step 2: 3 NaN, 0 +Inf, 0 −Inf.")
        counts = trace(pg, "chart-tensor-depth", "s:tensor/depth/nan#0")
        assert counts["y"] == [0, 0, 3, 0]
        assert pg.evaluate(  # the counts' axis shows once there is something to count
            "document.getElementById('chart-tensor-depth')._fullLayout.yaxis3.visible")
    finally:
        context.close()
    assert errors == []


@pytest.mark.browser
def test_notifications_are_asked_for_by_a_button_not_on_load(
        server: Server, page: tuple[Any, PageLog]) -> None:
    pg, log = page
    pg.add_init_script("""(() => {  // count the page's permission requests (browser API, not ours)
        const ask = Notification.requestPermission.bind(Notification);
        window.permissionRequests = 0;
        Notification.requestPermission = (...args) => {
          window.permissionRequests += 1;
          return ask(...args);
        };
    })()""")
    pg.goto(f"{server.url}/?token={VIEW_TOKEN}")
    pg.wait_for_selector("#live-status[data-state='live']")
    pg.wait_for_selector("#runs tbody tr, #runs-empty:not([hidden])")  # the runs have loaded
    assert pg.evaluate("window.permissionRequests") == 0  # nothing asked on load
    assert pg.evaluate("Notification.permission") == "default"
    button = pg.locator("#notify")
    assert button.is_visible()
    button.click()  # the user asks; the browser answers (headless: denied); the button goes
    pg.wait_for_function("() => document.getElementById('notify').hidden")
    assert pg.evaluate("window.permissionRequests") == 1
    assert pg.evaluate("Notification.permission") != "default"
    assert log.errors == [] and log.dialogs == []


@pytest.mark.browser
def test_runs_list_shows_every_runs_progress_live_and_silent_runs(
        server: Server, page: tuple[Any, PageLog], monitor: Callable[[str], Monitor]) -> None:
    pg, log = page
    old = time.time() - 3600
    ingest(server, [RunStart(run="gone-quiet", session="q", time=old),
                    *(Step(run="gone-quiet", session="q", seq=i + 1, step=i, time=old + i,
                           loss=1.0) for i in range(3))])
    m = monitor("progressing")
    healthy(m, range(5))
    quiet, busy = run_id(server, "gone-quiet"), run_id(server, "progressing")

    pg.goto(f"{server.url}/?token={VIEW_TOKEN}")  # follows no run: only progress messages
    row = pg.locator(f"#runs tr[data-run-id='{busy}']")
    row.wait_for()
    quiet_row = pg.locator(f"#runs tr[data-run-id='{quiet}']")
    assert quiet_row.get_attribute("data-status") == "silent"
    assert quiet_row.locator(".status").inner_text() == "silent"
    assert row.get_attribute("data-status") == "running"

    healthy(m, range(5, 60))
    pg.wait_for_function("id => document.querySelector(`#runs tr[data-run-id='${id}'] td.step`)"
                         ".textContent === '59'", arg=busy)
    rate = row.locator("td.rate").inner_text()
    assert rate != "—" and float(rate) > 0
    assert pg.evaluate("window.trainvitals.pointsReceived") == 0  # no steps were sent to it
    assert log.errors == [] and log.dialogs == []


@pytest.mark.browser
def test_two_runs_overlay_in_compare_view(
        server: Server, page: tuple[Any, PageLog], monitor: Callable[[str], Monitor]) -> None:
    pg, log = page
    a, b = monitor("cmp-exp"), monitor("cmp-softplus")
    train(a, range(25))
    healthy(b, range(20))
    ida, idb = run_id(server, "cmp-exp"), run_id(server, "cmp-softplus")

    pg.goto(f"{server.url}/?token={VIEW_TOKEN}")
    compare = pg.locator("#compare")
    pg.locator(f"#runs tr[data-run-id='{idb}'] input.pick").check()
    assert compare.is_disabled()
    pg.locator(f"#runs tr[data-run-id='{ida}'] input.pick").check()
    assert compare.inner_text() == "Compare 2 runs"
    compare.click()
    pg.wait_for_selector(f"#run-view[data-state='ready'][data-run-id='{idb},{ida}']")
    assert pg.evaluate("location.hash") == f"#compare={idb},{ida}"
    assert pg.locator("#run-view h2").inner_text() == "Compare: cmp-softplus vs cmp-exp"

    loss = lengths(pg, "chart-loss")
    assert (loss[f"s:{ida}:loss#0"], loss[f"s:{idb}:loss#0"]) == (25, 20)
    assert (loss[f"s:{ida}:loss_used#0"], loss[f"s:{idb}:loss_used#0"]) == (25, 20)
    assert trace(pg, "chart-loss", f"s:{ida}:loss#0")["x"] == list(range(25))  # aligned by step
    assert trace(pg, "chart-loss", f"s:{idb}:loss#0")["name"] == "cmp-softplus · loss"
    grad = lengths(pg, "chart-grad")
    assert (grad[f"s:{ida}:grad_norm#0"], grad[f"s:{idb}:grad_norm#0"]) == (25, 20)
    assert lengths(pg, "chart-tensor-logits")[f"s:{ida}:tensor/logits/max#0"] == 25

    healthy(b, range(20, 30))  # live: the compared run grows in place
    wait_points(pg, "chart-loss", f"s:{idb}:loss#0", 30)
    assert pg.evaluate("id => window.trainvitals.draws(id)", "chart-loss") == 1
    # Zoom on one chart zooms the others.
    pg.evaluate("Plotly.relayout('chart-loss', {'xaxis.range': [5, 15]})")
    pg.wait_for_function("() => { const r = document.getElementById('chart-grad')._fullLayout"
                         ".xaxis.range; return r[0] === 5 && r[1] === 15; }")
    assert log.errors == [] and log.dialogs == []


@pytest.mark.browser
def test_user_names_are_text_not_markup(
        server: Server, page: tuple[Any, PageLog], monitor: Callable[..., Monitor]) -> None:
    pg, log = page
    name = "<img src=x onerror=alert(1)>"
    component = "<img src=y onerror=alert(2)>"
    tensor = "<img src=z onerror=alert(3)>"
    value = "<script>alert(4)</script>"
    m = monitor(name, config={component: value, "clip": CLIP})
    for steps in (range(CLIP_FROM - 2, CLIP_FROM + 2), range(NAN_STEP - 1, NAN_STEP + 1)):
        train(m, steps, components=(component, "<b>kl</b>"))
    rid = run_id(server, name)

    pg.goto(f"{server.url}/?token={VIEW_TOKEN}#run={rid}")
    pg.wait_for_selector(f"#run-view[data-state='ready'][data-run-id='{rid}']")
    assert pg.locator(f"#runs tr[data-run-id='{rid}'] td.name").inner_text() == name
    assert pg.locator("#run-view h2").inner_text() == name
    # The component names reach plotly's legend as text too.
    wait_points(pg, "chart-loss", f"s:loss/{component}#0", 2)
    legend = pg.locator("#chart-loss .legendtext").all_text_contents()
    assert f"loss/{component}" in legend and "loss/<b>kl</b>" in legend
    # ... and to the alerts panel (the NaN at NAN_STEP opens an alert on each component).
    pg.wait_for_function(
        "name => [...document.querySelectorAll('#alerts li')].some(li => li.dataset.series === name"
        " && li.querySelector('.message').textContent.includes(name))", arg=f"loss/{component}")
    # Config keys and values.
    pg.locator("#config summary").click()
    assert pg.locator("#config th").all_inner_texts() == ["clip", component] or (
        pg.locator("#config th").all_inner_texts() == [component, "clip"])
    assert value in pg.locator("#config td").all_inner_texts()

    # A tensor named like markup goes NaN while the page watches, once the NaN loss's incident
    # has resolved (a new cause, not more evidence of the old one): its chart, and the toast of
    # the incident it opens, show the names as text.
    for step in range(NAN_STEP + 1, NAN_STEP + 9):
        t = torch.ones(4)
        t[0] = float("nan") if step == NAN_STEP + 8 else 1.0
        m.tensor(tensor, t)
        m.log_step(step, loss=1.0, loss_used=1.0, components={component: 0.75, "<b>kl</b>": 0.25})
    assert m.flush(10), m.stats()
    toast = pg.locator(".toast[data-severity='critical']")
    toast.wait_for()
    assert toast.locator(".toast-run").inner_text() == name
    assert tensor in toast.locator(".toast-message").inner_text()
    pg.wait_for_function("t => [...document.querySelectorAll('#incidents .incident-headline')]"
                         ".some(p => p.textContent.includes(t))", arg=tensor)  # its card too
    title = pg.evaluate("t => [...document.querySelectorAll('figure.chart-card')].find("
                        "f => f.dataset.tensor === t)?.querySelector('h3').textContent", tensor)
    assert title == f"Tensor {tensor}"
    pg.wait_for_function("s => [...document.querySelectorAll('#alerts li')]"
                         ".some(li => li.dataset.series === s)", arg=f"tensor/{tensor}")

    assert pg.evaluate("document.querySelectorAll('img').length") == 0
    assert pg.evaluate("document.querySelectorAll('b, script:not([src])').length") == 0
    # Leaving the run takes its charts down cleanly (plotly builds selectors from trace uids).
    pg.evaluate("location.hash = ''")
    pg.wait_for_selector("#run-view[data-state='empty']")
    pg.wait_for_timeout(300)  # time for a (wrongly) injected onerror handler, or purge, to fail
    assert log.dialogs == []
    assert log.errors == []


@pytest.mark.browser
def test_non_finite_wire_values_decode(server: Server, page: tuple[Any, PageLog]) -> None:
    """fromWire restores NaN and ±Inf from their wire strings and leaves the rest alone."""
    pg, log = page
    pg.goto(f"{server.url}/?token={VIEW_TOKEN}")
    got = pg.evaluate("""async () => {
        const { fromWire } = await import('/static/api.js');
        return ['NaN', 'Infinity', '-Infinity', 1.5, 'zeroed'].map(fromWire).map(String);
    }""")
    assert got == ["NaN", "Infinity", "-Infinity", "1.5", "zeroed"]
    assert re.fullmatch(r"(\(\d+\) )?trainvitals", pg.title())
    assert log.errors == []


@pytest.mark.browser
def test_pure_helpers_of_the_page(server: Server, page: tuple[Any, PageLog]) -> None:
    """Series-name parsing, zoom events and number formats, in the browser's own modules."""
    pg, log = page
    pg.goto(f"{server.url}/?token={VIEW_TOKEN}")
    got = pg.evaluate("""async () => {
        const v = await import('/static/vitals.js');
        const c = await import('/static/charts.js');
        const f = await import('/static/format.js');
        return {
          tensor: ['tensor/a/b/max', 'tensor/x/headroom', 'tensor/nan', 'loss'].map(v.tensorOf),
          id: v.idPart('<a b>/c'),
          ranges: [{'xaxis.range[0]': 1, 'xaxis.range[1]': 9}, {'xaxis.range': [2, 3]},
                   {'xaxis.autorange': true}, {'yaxis.range[0]': 1}].map(c.Chart.rangeOf),
          same: [c.sameRange([1, 2], [1.2, 2.4]), c.sameRange([1, 2], [1, 3]),
                 c.sameRange(null, null)],
          rates: [0, 0.0123, 2.345, 1234.5, NaN, null].map(f.formatRate),
          status: [{status: 'running', silent: true}, {status: 'finished', silent: true},
                   {status: 'running'}].map(f.displayStatus),
        };
    }""")
    assert got == {
        "tensor": [{"tensor": "a/b", "stat": "max"}, None, None, None],
        "id": "_3c_a_20_b_3e__2f_c",
        "ranges": [[1, 9], [2, 3], None, None],
        "same": [True, False, True],
        "rates": ["—", "0.012", "2.3", "1235", "—", "—"],
        "status": ["silent", "finished", "running"],
    }
    assert log.errors == []


@pytest.mark.browser
def test_reconnects_and_reloads_after_a_server_restart(
        tmp_path: Path, page: tuple[Any, PageLog]) -> None:
    pg, log = page
    settings = Settings(port=0, data_dir=tmp_path, ingest_token=INGEST_TOKEN,
                        view_token=VIEW_TOKEN, log_alerts=False)
    first = ServerThread(settings).start()
    server = Server(first.http_url, first.ws_url)
    m = Monitor("restarted", server=server.ws, token=INGEST_TOKEN, close_timeout=5, spool=None)
    second: ServerThread | None = None
    try:
        train(m, range(10))
        rid = run_id(server, "restarted")
        pg.goto(f"{server.url}/?token={VIEW_TOKEN}#run={rid}")
        pg.wait_for_selector(f"#run-view[data-state='ready'][data-run-id='{rid}']")
        assert pg.locator("#live-status").get_attribute("data-state") == "live"
        assert lengths(pg, "chart-loss")["s:loss#0"] == 10

        first.stop()
        pg.wait_for_selector("#live-status[data-state='reconnecting']")
        train(m, range(10, 20), flush=False)  # the Monitor keeps these until it reconnects
        second = ServerThread(settings.model_copy(update={"port": first.port})).start()
        assert m.flush(15), m.stats()
        pg.wait_for_selector("#live-status[data-state='live']")
        wait_points(pg, "chart-loss", "s:loss#0", 20)
        assert trace(pg, "chart-loss", "s:loss#0")["x"] == list(range(20))
    finally:
        m.close(timeout=5)
        if second is not None:
            second.stop()
    # While the server was away, Chromium logs the refused connections; nothing else.
    unexpected = [e for e in log.errors
                  if "ERR_CONNECTION_REFUSED" not in e and "WebSocket connection to" not in e]
    assert unexpected == [] and log.dialogs == []


def test_every_frontend_file_is_served(server: Server) -> None:
    """No browser needed: the page and each module it can import are served, with the CSP.

    Fails when the installed package lacks a file of frontend/ — e.g. a strict-mode editable
    install made before the file existed (re-run the editable install), or package-data
    missing a suffix.
    """
    index = httpx.get(server.url + "/", timeout=10)
    assert index.status_code == 200, (
        f"GET / answered {index.status_code}: the installed trainvitals.frontend lacks "
        "index.html (strict editable install older than the file? re-run the editable install)")
    assert "script-src 'self'" in index.headers["content-security-policy"]
    for ref in re.findall(r'(?:src|href)="(/static/[^"]+)"', index.text):
        assert httpx.get(server.url + ref, timeout=30).status_code == 200, ref
    files = sorted(p.name for p in FRONTEND.iterdir() if p.suffix in (".js", ".css", ".svg"))
    assert "app.js" in files
    for name in files:
        response = httpx.get(f"{server.url}/static/{name}", timeout=10)
        assert response.status_code == 200, (
            f"/static/{name} is not served: the installed trainvitals.frontend lacks it "
            "(strict editable install older than the file? re-run the editable install)")
        assert response.content == (FRONTEND / name).read_bytes()
        if name.endswith(".js"):
            assert response.headers["content-type"].startswith("text/javascript")
            # Relative imports must name files that exist (the browser would 404 otherwise).
            for target in re.findall(r"from '\./([^']+)'", response.text):
                assert (FRONTEND / target).is_file(), f"{name} imports missing {target}"
