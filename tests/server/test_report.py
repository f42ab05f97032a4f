"""Exports over a real server: the CSV (every value exact, NaN/±Inf as themselves, chunked) and
the self-contained HTML report.

The report is the page's own run view over data inlined in the file. Without a browser: the
file holds plotly.js, our modules and the run's data exactly as the REST API answers it, and no
user-named string can break out of its JSON blocks. In headless Chromium (marked ``browser``;
run them with ``pytest -m browser``): opened from disk with every other request refused, it
draws the same charts, traces, points and incident cards as the live page draws for the same
run, keeps NaN/±Inf as edge markers and a long series' spike, and shows hostile names as text
that runs nothing.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.sync.client import connect

from trainvitals.protocol import (
    Batch,
    ClipEvent,
    Record,
    RunEnd,
    RunStart,
    Step,
    TensorStats,
    encode,
)
from trainvitals.server import ServerThread, Settings, SQLiteStore
from trainvitals.server.views.export import csv_chunks
from trainvitals.server.views.report import REPORT_BUCKETS, REPORT_CLIPS

TOKEN = "ingest-token-for-report-tests"
NAN, INF = math.nan, math.inf
XSS = "<img src=x onerror=alert(1)>"
RUN = f"</script>{XSS}"  # the run's name: would end an inline <script> if written raw
TENSOR = "</script><svg onload=alert(2)>"  # a tensor name with '/' and markup in it
CONFIG_VALUE = "</script><b>cfg</b>"
LONG_RUN, LONG_STEPS, SPIKE_STEP, SPIKE, LONG_NAN = "long-spike", 20_000, 12_345, 1.0e6, 15_000
CHARTED = {"loss", "loss_used", "grad_norm", f"loss/{XSS}",
           *(f"tensor/{t}/{s}" for t in ("depth", TENSOR)
             for s in ("min", "max", "mean", "nan", "posinf", "neginf"))}
VIEWPORT = {"width": 1600, "height": 1000}
TIMEOUT_MS = 45_000


def stats(i: int, nan: int = 0) -> TensorStats:
    return TensorStats(count=4, nan=nan, posinf=0, neginf=0, min=-1.0 - i, max=1.0 + i,
                       mean=0.1 * i, absmax=1.0 + i)


def records(run: str) -> list[Record]:
    """Two ranks; rank 1 reports every other step; NaN, ±Inf, a clip and two tensors."""
    out: list[Record] = []
    for rank in (0, 1):
        s = f"s{rank}"
        out.append(RunStart(run=run, session=s, rank=rank, world_size=2, time=1000.0,
                            config={"lr": 0.1, XSS: CONFIG_VALUE}))
        for i in range(0, 12, 1 + rank):
            loss = {3: NAN, 4: INF, 5: -INF}.get(i, 1.0 / (i + 1) + rank)
            clip = (ClipEvent(raw=50.0, threshold=10.0, action="zeroed",
                              reason="above_threshold", components={XSS: 50.0})
                    if i == 8 else None)
            out.append(Step(run=run, session=s, rank=rank, seq=i + 1, step=i, time=1001.0 + i,
                            loss=loss, loss_used=0.0 if clip else loss, grad_norm=0.5,
                            components={XSS: 0.25},
                            tensors={"depth": stats(i, nan=1 if i == 6 else 0),
                                     TENSOR: stats(i)}, clip=clip))
        out.append(RunEnd(run=run, session=s, rank=rank, seq=100, time=2000.0))
    return out


def long_loss(step: int) -> float:
    """A noisy falling loss with one spike and one NaN."""
    if step == SPIKE_STEP:
        return SPIKE
    if step == LONG_NAN:
        return NAN
    return 1.0 + 1.0 / (1 + step / 1000) + (step * 7919 % 101) / 2000


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    """A server holding the hostile-named run (sent the real way: alerts are judged) and a
    long run (written straight to the store, faster)."""
    settings = Settings(port=0, data_dir=tmp_path_factory.mktemp("report"), ingest_token=TOKEN,
                        log_alerts=False)
    store = SQLiteStore(settings.db_path)
    store.open()
    store.write([RunStart(run=LONG_RUN, session="l", time=1.0),
                 *(Step(run=LONG_RUN, session="l", seq=i + 1, step=i, time=1.0 + i,
                        loss=long_loss(i)) for i in range(LONG_STEPS))])
    store.close()
    with ServerThread(settings) as server:
        with connect(f"{server.ws_url}/ws/ingest", additional_headers={
                "Authorization": f"Bearer {TOKEN}"}, open_timeout=10, proxy=None) as ws:
            ws.send(encode(Batch(tuple(records(RUN)))))
            assert json.loads(ws.recv(timeout=10))["type"] == "ack"
        yield server


def _id_of(srv: ServerThread, name: str) -> int:
    runs = httpx.get(f"{srv.http_url}/api/runs", timeout=60).json()["runs"]
    return int(next(r["id"] for r in runs if r["name"] == name))


@pytest.fixture(scope="module")
def run_id(srv: ServerThread) -> int:
    return _id_of(srv, RUN)


@pytest.fixture(scope="module")
def long_id(srv: ServerThread) -> int:
    return _id_of(srv, LONG_RUN)


def get(srv: ServerThread, path: str, **params: Any) -> Any:
    response = httpx.get(f"{srv.http_url}{path}", params=params, timeout=60)
    response.raise_for_status()
    return response.json()


def report_of(srv: ServerThread, run: int) -> httpx.Response:
    response = httpx.get(f"{srv.http_url}/api/runs/{run}/report.html", timeout=60)
    assert response.status_code == 200
    return response


def block(page: str, block_id: str) -> Any:
    """The JSON of one ``<script type="application/json">`` block of the report."""
    match = re.search(rf'<script type="application/json" id="{block_id}">(.*?)</script>', page,
                      flags=re.S)
    assert match, block_id
    return json.loads(match.group(1))


# --------------------------------------------------------------------------- CSV


def test_csv_has_every_value_exactly_with_non_finite_values_as_themselves(
        srv: ServerThread, run_id: int) -> None:
    response = httpx.get(f"{srv.http_url}/api/runs/{run_id}/export.csv", timeout=60)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    assert response.headers["content-disposition"] == (
        'attachment; filename="script_img_src_x_onerror_alert_1.csv"')  # only safe characters
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert [(r["rank"], r["step"]) for r in rows] == (
        [("0", str(i)) for i in range(12)] + [("1", str(i)) for i in range(0, 12, 2)])
    by = {(int(r["rank"]), int(r["step"])): r for r in rows}
    assert [by[0, i]["loss"] for i in (3, 4, 5)] == ["nan", "inf", "-inf"]
    assert float(by[0, 2]["loss"]) == 1.0 / 3  # repr round-trips exactly
    assert by[1, 2]["loss"] == repr(1.0 / 3 + 1)
    assert by[0, 6]["tensor/depth/nan"] == "1.0"
    assert by[0, 7][f"loss/{XSS}"] == "0.25"  # a user name is a column name, not markup
    assert (by[0, 8]["clip_raw"], by[0, 8]["clip_threshold"], by[0, 8]["clip_action"]) == (
        "50.0", "10.0", "zeroed")
    assert by[0, 7]["clip_action"] == "" and by[1, 8]["clip_action"] == "zeroed"
    assert "lr" not in rows[0]  # never reported: no column


def test_csv_chunks_join_series_of_different_lengths(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "t.sqlite3")
    store.open()
    try:
        store.write([Step(run="c", session="s", seq=i, step=i, loss=float(i),
                          grad_norm=float(-i) if i % 3 == 0 else None) for i in range(10)])
        run = store.runs()[0]
        pieces = list(csv_chunks(store, run, chunk=2))
    finally:
        store.close()
    assert len(pieces) > 4  # really chunked
    rows = list(csv.reader(io.StringIO("".join(pieces))))
    assert rows[0][:4] == ["rank", "step", "grad_norm", "loss"]
    assert [r[:4] for r in rows[1:]] == [
        ["0", str(i), repr(float(-i)) if i % 3 == 0 else "", repr(float(i))] for i in range(10)]


# --------------------------------------------------------------------------- the report file


def test_the_report_is_one_file_with_plotly_our_modules_and_no_way_out(
        srv: ServerThread, run_id: int) -> None:
    response = report_of(srv, run_id)
    assert response.headers["content-disposition"] == (
        'attachment; filename="script_img_src_x_onerror_alert_1.html"')
    page = response.text
    # plotly.js and the page's own modules are inside; nothing is loaded from elsewhere.
    assert len(page) > 3_000_000 and "plotly.js v" in page
    assert re.search(r"<script[^>]+src=|<link\b|<iframe\b|<img\b", page) is None
    markup = re.sub(r"<script\b.*?</script>", "", page, flags=re.S)
    assert "http:" not in markup and "https:" not in markup
    modules = block(page, "trainvitals-modules")
    assert modules["entry"] == "report.js"
    assert {"api.js", "run_view.js", "charts.js", "series.js", "report.js"} <= set(
        modules["modules"])
    # Each inline script runs by its hash; modules only from blob: URLs; nothing may connect.
    csp = re.search(r'<meta http-equiv="Content-Security-Policy" content="([^"]+)">', page)
    assert csp
    scripts = re.findall(r"<script(?: type=\"module\")?>(.*?)</script>", page, flags=re.S)
    assert len(scripts) == 2  # plotly.js and the module loader
    for text in scripts:
        digest = base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()
        assert f"'sha256-{digest}'" in csp.group(1)
    assert "connect-src 'none'" in csp.group(1) and "default-src 'none'" in csp.group(1)
    assert "'unsafe-inline'" not in csp.group(1).split("script-src")[1].split(";")[0]


def test_hostile_names_stay_inside_the_json_blocks(srv: ServerThread, run_id: int) -> None:
    page = report_of(srv, run_id).text
    for text in (RUN, XSS, TENSOR, CONFIG_VALUE, "</script><"):
        assert text not in page  # every '<' of user data is written \u003c
    data = block(page, "trainvitals-report")  # ... and comes back intact as data
    assert data["detail"]["run"]["name"] == RUN
    assert data["detail"]["run"]["config"] == {"lr": 0.1, XSS: CONFIG_VALUE}
    assert f"tensor/{TENSOR}/max" in {s["name"] for s in data["series"]}


def test_the_report_carries_the_run_as_the_rest_api_answers_it(
        srv: ServerThread, run_id: int) -> None:
    data = block(report_of(srv, run_id).text, "trainvitals-report")
    assert data["run_id"] == run_id
    assert data["detail"] == get(srv, f"/api/runs/{run_id}")
    assert data["health"] == get(srv, f"/api/runs/{run_id}/health")
    assert "NaN/Inf in" in data["health"]["summary"]
    assert data["alerts"] == get(srv, "/api/alerts", run=RUN)["alerts"]
    assert data["incidents"] == get(srv, f"/api/runs/{run_id}/incidents")["incidents"] != []
    assert data["clips"] == get(srv, f"/api/runs/{run_id}/clips", limit=REPORT_CLIPS)["clips"]
    # Every series the run view charts, and only those, as the chart's REST call answers it.
    names = sorted({s["name"] for s in data["series"]})
    assert set(names) == CHARTED
    assert data["series"] == get(srv, f"/api/runs/{run_id}/series", name=names,
                                 buckets=REPORT_BUCKETS)["series"]
    loss = next(s for s in data["series"] if s["name"] == "loss" and s["rank"] == 0)
    assert loss["values"][3:6] == ["NaN", "Infinity", "-Infinity"]  # the wire's own strings
    assert loss["values"][:3] == [1.0, 0.5, pytest.approx(1 / 3)]


def test_a_long_series_is_downsampled_in_the_report_and_keeps_its_spike(
        srv: ServerThread, long_id: int) -> None:
    data = block(report_of(srv, long_id).text, "trainvitals-report")
    (loss,) = data["series"]
    assert loss["downsampled"] is True and len(loss["steps"]) <= 4 * REPORT_BUCKETS + 8
    assert loss["steps"][0] == 0 and loss["steps"][-1] == LONG_STEPS - 1
    assert loss["values"][loss["steps"].index(SPIKE_STEP)] == SPIKE
    assert loss["values"][loss["steps"].index(LONG_NAN)] == "NaN"


def test_exports_of_an_unknown_run_are_404(srv: ServerThread) -> None:
    for path in ("report.html", "export.csv"):
        assert httpx.get(f"{srv.http_url}/api/runs/999/{path}", timeout=60).status_code == 404


# --------------------------------------------------------------------------- in Chromium


class Opened:
    """A page and what it did that it should not have: errors, dialogs, and (for a file
    opened offline) every request for anything but the file itself, refused."""

    def __init__(self, browser: Any) -> None:
        self.context = browser.new_context(viewport=VIEWPORT)
        self.page = self.context.new_page()
        self.page.set_default_timeout(TIMEOUT_MS)
        self.problems: list[str] = []
        self.page.on("console", lambda m: self.problems.append(f"console: {m.text}")
                     if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.problems.append(f"pageerror: {e}"))
        self.page.on("dialog", lambda d: (self.problems.append(f"dialog: {d.message}"),
                                          d.dismiss()))

    def only(self, own: str) -> None:
        """Refuse every request but ``own`` (and the page's in-memory blob: modules)."""
        def allowed(url: str) -> bool:
            return url == own or url.startswith("blob:")

        def route(r: Any) -> None:
            if allowed(r.request.url):
                r.continue_()
            else:
                r.abort()

        self.page.route("**/*", route)
        self.page.on("request", lambda r: None if allowed(r.url)
                     else self.problems.append(f"request: {r.url}"))

    def open(self, url: str) -> Opened:
        self.page.goto(url)
        self.page.wait_for_selector("#run-view[data-state='ready']")
        return self


@pytest.fixture
def opened(browser: Any) -> Iterator[Any]:
    """``opened(url)`` opens a page; ``opened(path, offline=True)`` a file whose every other
    request is refused (and counted as a problem). Closed after the test."""
    made: list[Opened] = []

    def open_page(target: str | Path, *, offline: bool = False) -> Opened:
        made.append(o := Opened(browser))
        if offline:
            target = Path(target).as_uri()
            o.only(target)
        return o.open(str(target))

    yield open_page
    for o in made:
        o.context.close()


def save_report(srv: ServerThread, run: int, tmp_path: Path) -> Path:
    path = tmp_path / "report.html"
    path.write_bytes(report_of(srv, run).content)
    return path


DRAWN = """() => window.trainvitals.settled().then(() =>
  [...document.querySelectorAll('figure.chart-card')].map(card => {
    const el = card.querySelector('.js-plotly-plot');
    return {id: el.id, title: card.querySelector('h3').textContent,
            caption: card.querySelector('.chart-extra').hidden ? null
              : card.querySelector('.chart-extra').textContent,
            traces: el.data.map(t => ({key: t.meta, name: t.name, points: t.x.length,
                                       fill: t.fill || null, yaxis: t.yaxis || 'y'}))};
  }))"""


def drawn(pg: Any) -> list[dict[str, Any]]:
    """Every chart in page order: id, title, caption and each trace's key, name, points."""
    result: list[dict[str, Any]] = pg.evaluate(DRAWN)
    return result


def trace(pg: Any, chart: str, key: str) -> dict[str, Any]:
    """x, y and hover text of one trace, as plotly holds it."""
    result: dict[str, Any] = pg.evaluate(
        """([id, key]) => { const t = document.getElementById(id).data.find(t => t.meta === key);
             return {x: Array.from(t.x), y: Array.from(t.y), text: Array.from(t.text || [])}; }""",
        [chart, key])
    return result


def incident_cards(pg: Any) -> list[dict[str, str]]:
    """The incident cards: their data attributes and all their text (evidence included)."""
    result: list[dict[str, str]] = pg.evaluate(
        """() => [...document.querySelectorAll('#incidents article.incident')].map(c =>
             ({...c.dataset, text: c.textContent}))""")
    return result


def alert_items(pg: Any) -> list[list[str | None]]:
    result: list[list[str | None]] = pg.evaluate(
        """() => [...document.querySelectorAll('#alerts li')].map(li =>
             [li.dataset.rule, li.dataset.series, li.dataset.state, li.textContent])""")
    return result


@pytest.mark.browser
def test_the_report_draws_what_the_live_page_draws_for_the_same_run(
        srv: ServerThread, run_id: int, opened: Any, tmp_path: Path) -> None:
    live = opened(f"{srv.http_url}/#run={run_id}")
    report = opened(save_report(srv, run_id, tmp_path), offline=True)
    page_charts, report_charts = drawn(live.page), drawn(report.page)
    ids = [c["id"] for c in report_charts]
    assert ids[:2] == ["chart-loss", "chart-grad"] and len(ids) == 4 and "chart-tensor-depth" in ids
    loss = {t["key"]: t["points"] for t in report_charts[0]["traces"]}
    assert loss["s:loss#0"] == 12 and loss["s:loss#1"] == 6 and loss["clip"] == 2
    assert report_charts == page_charts  # same charts, traces, names, points, band and axes
    for pg in (live.page, report.page):  # and the same words around them
        pg.wait_for_selector("#health[data-level='critical']")  # asked for apart from the charts
    assert report.page.locator("#health").inner_text() == live.page.locator("#health").inner_text()
    assert alert_items(report.page) == alert_items(live.page) != []
    assert incident_cards(report.page) == incident_cards(live.page) != []
    assert report.page.locator("#run-view .run-meta").inner_text() == (
        live.page.locator("#run-view .run-meta").inner_text())
    # Read-only: no export links (no server to download from).
    assert live.page.locator("#export-html").count() == 1
    assert report.page.locator("#export-html, #export-csv").count() == 0
    assert live.problems == [] and report.problems == []


@pytest.mark.browser
def test_the_report_shows_the_incident_cards_offline_and_zooms_to_their_onset(
        srv: ServerThread, run_id: int, opened: Any, tmp_path: Path) -> None:
    report = opened(save_report(srv, run_id, tmp_path), offline=True)
    pg = report.page
    (incident,) = get(srv, f"/api/runs/{run_id}/incidents")["incidents"]
    card = pg.locator("#incidents article.incident")
    assert card.count() == 1
    assert card.get_attribute("data-incident") == incident["id"] == f"{RUN}#1"
    assert card.get_attribute("data-state") == incident["state"]
    assert card.locator(".incident-headline").inner_text() == incident["headline"]
    assert card.locator(".incident-remedy").inner_text() == f"Try: {incident['remedy']}"
    assert card.locator(".onset").inner_text() == f"onset step {incident['onset_step']}"
    assert card.locator(".incident-meta .rank").inner_text() == "ranks " + ", ".join(
        str(r) for r in incident["ranks"])  # two ranks: which, the first bad one first
    card.locator(".incident-evidence summary").click()
    series = card.locator(".evidence-list li .series").all_inner_texts()
    assert series == [e["series"] for e in incident["evidence"]]
    assert card.locator(".evidence-count").inner_text() == str(incident["evidence_count"])
    card.locator(".incident-headline").click()  # zooms every chart to around the onset
    onset = incident["onset_step"]
    for chart in ("chart-loss", "chart-grad", "chart-tensor-depth"):
        pg.wait_for_function("""([id, step]) => { const l = document.getElementById(id)._fullLayout;
            const [a, b] = l.xaxis.range; return a <= step && step <= b
              && l.shapes.length === 1 && l.shapes[0].x0 === step; }""", arg=[chart, onset])
    assert pg.evaluate("document.querySelectorAll('img, b, [onerror], [onload]').length") == 0
    assert report.problems == []


@pytest.mark.browser
def test_the_report_draws_nan_and_inf_as_edge_markers(
        srv: ServerThread, run_id: int, opened: Any, tmp_path: Path) -> None:
    report = opened(save_report(srv, run_id, tmp_path), offline=True)
    pg = report.page
    pg.evaluate("window.trainvitals.settled()")
    raw = trace(pg, "chart-loss", "s:loss#0")
    assert raw["y"][:3] == [1.0, 0.5, pytest.approx(1 / 3)]
    assert raw["y"][3:6] == [None, None, None]  # gaps in the line, and markers at the edge:
    assert [trace(pg, "chart-loss", f"edge:{k}")["x"] for k in ("nan", "posinf", "neginf")] == [
        [3], [4], [5]]
    assert trace(pg, "chart-loss", "edge:nan")["text"][0].startswith("<b>NaN at step 3</b>")
    caption = pg.locator("figure[data-tensor='depth'] .chart-extra").inner_text()
    assert caption == "NaN/Inf elements on 1 step(s); latest at step 6: 1 NaN, 0 +Inf, 0 −Inf."
    clips = trace(pg, "chart-loss", "clip")
    assert clips["x"] == [8, 8] and "action zeroed" in clips["text"][0]
    assert report.problems == []


@pytest.mark.browser
def test_hostile_names_in_the_report_are_text_and_run_nothing(
        srv: ServerThread, run_id: int, opened: Any, tmp_path: Path) -> None:
    report = opened(save_report(srv, run_id, tmp_path), offline=True)
    pg = report.page
    assert pg.locator("#run-view h2").inner_text() == RUN
    assert pg.title() == f"{RUN} — trainvitals report"
    assert pg.locator("#config th").all_inner_texts() == ["lr", XSS]
    assert pg.locator("#config td").all_inner_texts() == ["0.1", CONFIG_VALUE]
    assert pg.locator(f"figure[data-tensor='{TENSOR}'] h3").inner_text() == f"Tensor {TENSOR}"
    assert f"loss/{XSS} [rank 0]" in pg.locator(".legendtext").all_text_contents()
    # No element came out of the names: no image, no bold, no svg with a handler.
    assert pg.evaluate("document.querySelectorAll('img, b, [onerror], [onload]').length") == 0
    pg.wait_for_timeout(200)  # time for a (wrongly) injected handler to run: none may
    assert report.problems == []


@pytest.mark.browser
def test_the_long_runs_report_is_thinned_and_draws_its_spike(
        srv: ServerThread, long_id: int, opened: Any, tmp_path: Path) -> None:
    report = opened(save_report(srv, long_id, tmp_path), offline=True)
    pg = report.page
    assert pg.evaluate("window.trainvitals.downsampled") is True
    pg.evaluate("window.trainvitals.settled()")
    loss = trace(pg, "chart-loss", "s:loss#0")
    assert 1000 < len(loss["x"]) <= 4 * REPORT_BUCKETS + 8  # thinned ...
    assert max(y for y in loss["y"] if y is not None) == SPIKE  # ... and the spike is drawn
    assert loss["y"][loss["x"].index(SPIKE_STEP)] == SPIKE
    assert trace(pg, "chart-loss", "edge:nan")["x"] == [LONG_NAN]
    assert report.problems == []
