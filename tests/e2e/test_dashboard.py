"""The dashboard in headless Chromium against a real server fed by a real Monitor.

The browser tests (marked ``browser``) run apart from the other tests, since sync Playwright
and pytest-asyncio do not share a process: ``pytest -m browser``. They need Debian's Chromium
at /usr/bin/chromium. The last test needs no browser and runs with the rest.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

from trainvitals import Monitor
from trainvitals.server import ServerThread, Settings

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
INGEST_TOKEN = "ingest-token-e2e"
VIEW_TOKEN = "view-token-e2e"
CLIP = 10.0
CLIP_FROM = 20  # raw loss jumps above the clip threshold from this step on
NAN_STEP = 30  # the raw loss is NaN at this step
STEPS = 40
FIRST = 15  # steps sent before the page opens; the rest (clips, NaN) stream while it watches
TIMEOUT_MS = 15_000
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


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    sync_api = pytest.importorskip("playwright.sync_api")
    if not shutil.which(CHROMIUM):
        pytest.skip(f"no Chromium at {CHROMIUM}")
    with sync_api.sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield chromium
        chromium.close()


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
def monitor(server: Server) -> Iterator[Callable[[str], Monitor]]:
    """Makes Monitors for runs on the test server; closes them (quickly) at the end."""
    made: list[Monitor] = []

    def make(run: str) -> Monitor:
        made.append(Monitor(run, server=server.ws, token=INGEST_TOKEN, config={"clip": CLIP}))
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
    return sum(1 for a in server.get("/api/alerts", state="open")["alerts"]
               if a["severity"] == "critical")


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
    expected = next(r for r in server.get("/api/runs")["runs"] if r["id"] == rid)["open_alerts"]
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

    # Runs list follows live: last step, then status after the run ends; title counts criticals.
    # (Predicates are functions: a bare expression string would need eval, which the CSP bans.)
    pg.wait_for_function("([id, step]) => document.querySelector(`#runs tr[data-run-id='${id}']"
                         " td.step`).textContent === step", arg=[rid, str(STEPS - 1)])
    m.close()
    pg.wait_for_selector(f"#runs tr[data-run-id='{rid}'][data-status='finished']")
    critical = open_critical(server)
    assert critical >= 1
    pg.wait_for_function("title => document.title === title", arg=f"({critical}) trainvitals")

    pg.screenshot(path=str(SCREENSHOT), full_page=True)
    assert log.errors == [] and log.dialogs == []


@pytest.mark.browser
def test_user_names_are_text_not_markup(
        server: Server, page: tuple[Any, PageLog], monitor: Callable[[str], Monitor]) -> None:
    pg, log = page
    name = "<img src=x onerror=alert(1)>"
    component = "<img src=y onerror=alert(2)>"
    m = monitor(name)
    for steps in (range(CLIP_FROM - 2, CLIP_FROM + 2), range(NAN_STEP - 1, NAN_STEP + 1)):
        train(m, steps, components=(component, "<b>kl</b>"))
    m.close()
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
    assert pg.evaluate("document.querySelectorAll('img').length") == 0
    assert pg.evaluate("document.querySelectorAll('b').length") == 0
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
def test_reconnects_and_reloads_after_a_server_restart(
        tmp_path: Path, page: tuple[Any, PageLog]) -> None:
    pg, log = page
    settings = Settings(port=0, data_dir=tmp_path, ingest_token=INGEST_TOKEN,
                        view_token=VIEW_TOKEN, log_alerts=False)
    first = ServerThread(settings).start()
    server = Server(first.http_url, first.ws_url)
    m = Monitor("restarted", server=server.ws, token=INGEST_TOKEN, close_timeout=5)
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
