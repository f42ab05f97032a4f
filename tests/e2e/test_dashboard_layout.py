"""The dashboard read at a glance (issue 17), in headless Chromium against a real server.

Runs go in the real way — protocol records over the ingest websocket, with the ingest token —
so the server stores and judges them as it would a trainer's. Checked at 1,440 × 900 and
2,560 × 1,440 (and a narrow window): charts side by side in as many columns as fit, full run
names and no clipped column in the runs list, the loss chart's linear/log/symlog switch on a
loss that explodes to 4·10³³ (remembered per run), whole-number ticks on the NaN/Inf-count
axis, the compare header (config differences, first incident, last values), and the
crosshair across every chart. ``pytest -m browser tests/e2e/test_dashboard_layout.py``.
"""

from __future__ import annotations

import itertools
import json
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from websockets.sync.client import connect

from trainvitals.protocol import Batch, Record, RunStart, Step, TensorStats, encode
from trainvitals.server import ServerThread, Settings

INGEST_TOKEN = "ingest-token-layout"
VIEW_TOKEN = "view-token-layout"
TIMEOUT_MS = 45_000  # generous: CI machines may be busy; waits end as soon as they can
NAN, INF = math.nan, math.inf
XSS = "<img src=x onerror=alert(1)>"
WIDE = {"width": 2560, "height": 1440}
LAPTOP = {"width": 1440, "height": 900}
NARROW = {"width": 800, "height": 900}

# One experiment, several seeds: the names differ only at their end.
SEED1, SEED2 = "pi3-overflow-lr3e-4-seed1", "pi3-overflow-lr3e-4-seed2"
LONG = "pi3_hospital_depth_head_exp_softplus_clip10_bf16_warmup2000/ablation.run"
EXPLODES = "pi3-overflow-explodes"  # loss 100 → 0.01 over 100 steps, then 4e33, NaN, +Inf
CALM = "pi3-overflow-calm"  # another run: its own scale choice
EXPLODE_FROM, NAN_STEP, INF_STEP, STEPS = 100, 110, 115, 120


@dataclass
class Server:
    url: str
    ws: str
    seq: dict[str, int] = field(default_factory=dict)

    def get(self, path: str, **params: Any) -> Any:
        response = httpx.get(self.url + path, params={**params, "token": VIEW_TOKEN}, timeout=10)
        response.raise_for_status()
        return response.json()

    def ingest(self, records: list[Record]) -> None:
        """Records to the ingest websocket, as a trainer sends them; returns once committed."""
        with connect(f"{self.ws}/ws/ingest", additional_headers={
                "Authorization": f"Bearer {INGEST_TOKEN}"}, open_timeout=10, proxy=None) as ws:
            ws.send(encode(Batch(tuple(records))))
            assert json.loads(ws.recv(timeout=10))["type"] == "ack"

    def run(self, name: str, steps: range, *, config: dict[str, Any] | None = None,
            loss: Any = None, tensors: Any = None) -> None:
        """Steps of run `name` (started on first use, with `config`), 10 steps a second of
        trainer time. `loss(step)` and `tensors(step)` give the values (defaults: a falling
        loss, one healthy tensor)."""
        records: list[Record] = []
        t0 = time.time() - 60
        if name not in self.seq:
            self.seq[name] = 0
            records.append(RunStart(run=name, session="s", time=t0, config=config or {}))
        for n in steps:
            self.seq[name] += 1
            value = loss(n) if loss else 2.0 / (1 + 0.1 * n)
            records.append(Step(
                run=name, session="s", seq=self.seq[name], step=n, time=t0 + 0.1 * n,
                loss=value, loss_used=value,
                components={"points": value * 0.75, "normal": value * 0.25},
                grad_norm=1.0 + 0.01 * n, grad_norm_post=1.0, lr=3e-4,
                tensors=tensors(n) if tensors else {"depth": stats(n)}))
        self.ingest(records)

    def run_id(self, name: str) -> int:
        return int(next(r["id"] for r in self.get("/api/runs")["runs"] if r["name"] == name))


def stats(n: int, nan: int = 0) -> TensorStats:
    return TensorStats(count=4096, nan=nan, posinf=0, neginf=0, min=-1.0 - 0.01 * n,
                       max=1.0 + 0.02 * n, mean=0.05, absmax=1.0 + 0.02 * n, dtype="float32",
                       headroom=88.0 - 1.0 - 0.02 * n)


def exploding_loss(n: int) -> float:
    if n == NAN_STEP:
        return NAN
    if n == INF_STEP:
        return INF
    return 4e33 if n >= EXPLODE_FROM else 100.0 * 10 ** (-4 * n / (EXPLODE_FROM - 1))


# NaN elements of depth on a few steps near the end: counts 1, 2, 3 (plotly would tick 0.5).
NAN_COUNTS = {105: 1, 106: 2, 107: 3, 108: 2}


@dataclass
class PageLog:
    errors: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    settings = Settings(port=0, data_dir=tmp_path_factory.mktemp("data"),
                        ingest_token=INGEST_TOKEN, view_token=VIEW_TOKEN, log_alerts=False)
    with ServerThread(settings) as srv:
        s = Server(srv.http_url, srv.ws_url)
        two = lambda n: {"depth": stats(n), "points3d": stats(n)}  # noqa: E731
        s.run(SEED1, range(60), config={"lr": 3e-4, "seed": 1}, tensors=two)
        s.run(SEED2, range(60), config={"lr": 3e-4, "seed": 2}, tensors=two)
        s.run(LONG, range(20))
        s.run(EXPLODES, range(STEPS), loss=exploding_loss,
              tensors=lambda n: {"depth": stats(n, NAN_COUNTS.get(n, 0))})
        s.run(CALM, range(40))
        yield s


@pytest.fixture
def open_page(browser: Any, server: Server) -> Iterator[Any]:
    """``open_page(viewport, route)``: a page of a fresh browser context at that size, opened
    at ``route`` (``#run=…``, ``#compare=…`` or ``""``) and, for a view, waited for until it is
    drawn. The page's console errors and dialogs must be none at the end."""
    made: list[tuple[Any, PageLog]] = []

    def make(viewport: dict[str, int], route: str = "") -> Any:
        context = browser.new_context(viewport=viewport)
        pg = context.new_page()
        pg.set_default_timeout(TIMEOUT_MS)
        log = PageLog()
        pg.on("console", lambda m: log.errors.append(m.text) if m.type == "error" else None)
        pg.on("pageerror", lambda e: log.errors.append(str(e)))

        def on_dialog(dialog: Any) -> None:
            log.dialogs.append(dialog.message)
            dialog.dismiss()

        pg.on("dialog", on_dialog)
        made.append((context, log))
        pg.goto(f"{server.url}/?token={VIEW_TOKEN}{route}")
        if route:
            ready(pg)
        else:
            pg.wait_for_selector("#runs tbody tr")
        return pg

    yield make
    for context, log in made:
        context.close()
        assert log.errors == [] and log.dialogs == [], (log.errors, log.dialogs)


def ready(pg: Any) -> None:
    """Wait until the open view is loaded and every chart is drawn at its card's width."""
    pg.wait_for_selector("#run-view[data-state='ready']")
    pg.evaluate("window.trainvitals.settled()")
    pg.wait_for_function("""() => [...document.querySelectorAll('.chart')].every(el =>
        el.classList.contains('js-plotly-plot') && el._fullLayout
        && Math.abs(el._fullLayout.width - el.clientWidth) < 1)""")


CARDS = """() => [...document.querySelectorAll('#run-view .charts > figure.chart-card')].map(f => {
    const r = f.getBoundingClientRect();
    return {id: f.querySelector('.chart').id, top: Math.round(r.top), left: Math.round(r.left),
            right: Math.round(r.right), width: Math.round(r.width)};
})"""
NO_PAGE_SCROLL = ("() => document.documentElement.scrollWidth"
                  " <= document.documentElement.clientWidth")


def rows(cards: list[dict[str, Any]]) -> list[list[str]]:
    """The chart ids, row by row (cards of one row share their top)."""
    out: dict[int, list[str]] = {}
    for c in cards:
        out.setdefault(c["top"], []).append(c["id"])
    return [out[top] for top in sorted(out)]


@pytest.mark.browser
@pytest.mark.parametrize(("viewport", "per_row", "compared_per_row"),
                         [(LAPTOP, 2, 2), (WIDE, 3, 4), (NARROW, 1, 1)],
                         ids=["1440x900", "2560x1440", "800x900"])
def test_charts_fill_the_row_as_far_as_they_fit(
        server: Server, open_page: Any, viewport: dict[str, int], per_row: int,
        compared_per_row: int) -> None:
    """The run view: 2 charts a row at 1,440 px, 3 at 2,560 px (the alerts panel beside them
    there), 1 on a narrow window. Compare has no alerts panel: 4 fit at 2,560 px."""
    pg = open_page(viewport, f"#run={server.run_id(SEED1)}")
    cards = pg.evaluate(CARDS)
    assert [c["id"] for c in cards] == [
        "chart-loss", "chart-grad", "chart-tensor-depth", "chart-tensor-points3d"]
    grid = rows(cards)
    assert len(grid[0]) == per_row, grid
    assert all(len(r) <= per_row for r in grid), grid
    assert sum(map(len, grid)) == 4
    # The charts of a row are side by side, none wider than its share, none off the page.
    assert all(c["right"] <= viewport["width"] for c in cards)
    first = cards[:per_row]
    assert all(a["right"] < b["left"] for a, b in itertools.pairwise(first))
    assert pg.evaluate(NO_PAGE_SCROLL)

    # Comparing the two seeds: the same grid (the whole width: no alerts panel), under the
    # header table.
    pg.evaluate(f"location.hash = '#compare={server.run_id(SEED1)},{server.run_id(SEED2)}'")
    pg.wait_for_selector("#compare-table")
    ready(pg)
    grid = rows(pg.evaluate(CARDS))
    assert len(grid[0]) == compared_per_row and sum(map(len, grid)) == 4, grid
    table = pg.evaluate("document.getElementById('compare-table').getBoundingClientRect().bottom")
    assert table <= pg.evaluate(CARDS)[0]["top"]
    assert pg.evaluate(NO_PAGE_SCROLL)


RUNS_LIST = """() => {
    const panel = document.querySelector('.runs-panel').getBoundingClientRect();
    const table = document.getElementById('runs');
    const cells = [...table.querySelectorAll('th, td')];
    return {
      panel: {left: panel.left, right: panel.right, width: panel.width},
      tableFits: table.scrollWidth <= table.parentElement.clientWidth,
      clipped: cells.filter(c => c.scrollWidth > c.clientWidth || c.scrollHeight > c.clientHeight)
                    .map(c => c.className + ': ' + c.textContent),
      rightmost: Math.max(...cells.map(c => c.getBoundingClientRect().right)),
      names: [...table.querySelectorAll('tbody td.name')].map(td => {
        const a = td.querySelector('a');
        const box = td.getBoundingClientRect();
        const inside = [...a.getClientRects()].every(r =>
            r.left >= box.left - 0.5 && r.right <= box.right + 0.5
            && r.top >= box.top - 0.5 && r.bottom <= box.bottom + 0.5);
        return {text: a.textContent, title: a.title, inside,
                ellipsis: getComputedStyle(td).textOverflow === 'ellipsis'
                          && getComputedStyle(td).overflow !== 'visible'};
      }),
    };
}"""


@pytest.mark.browser
def test_runs_list_shows_full_names_and_every_column(server: Server, open_page: Any) -> None:
    widths = {}
    for viewport in (LAPTOP, WIDE):
        pg = open_page(viewport)
        got = pg.evaluate(RUNS_LIST)
        names = {n["text"]: n for n in got["names"]}
        for name in (SEED1, SEED2, LONG):  # the whole name, drawn inside its cell
            assert names[name]["title"] == name
            assert names[name]["inside"], (viewport, names[name])
            assert not names[name]["ellipsis"]
        assert got["clipped"] == [], viewport
        assert got["tableFits"], viewport
        assert got["rightmost"] <= got["panel"]["right"] + 0.5, (viewport, got)
        assert pg.evaluate(NO_PAGE_SCROLL)
        widths[viewport["width"]] = got["panel"]["width"]
    assert widths[2560] > widths[1440] * 1.2, widths  # a wide screen gives the list room


def pixel_ys(pg: Any, chart: str, key: str, steps: range) -> list[float]:
    """Screen y (pixels) of the points of trace `key` at `steps`, as plotly places them."""
    got: list[float] = pg.evaluate("""([id, key, steps]) => {
        const gd = document.getElementById(id);
        const t = gd.data.find(t => t.meta === key);
        const ya = gd._fullLayout.yaxis;
        return steps.map(s => ya.c2p(t.y[Array.from(t.x).indexOf(s)]));
    }""", [chart, key, list(steps)])
    return got


def edge_points(pg: Any, chart: str) -> dict[str, list[int]]:
    """{edge kind: steps} of the NaN/Inf markers drawn (plotly's data and SVG points agree)."""
    got: dict[str, list[int]] = pg.evaluate("""id => {
        const gd = document.getElementById(id);
        const out = {};
        gd.data.forEach((t, i) => {
          if (!String(t.meta).startsWith('edge:') || !t.x.length) return;
          const group = gd.calcdata[i][0].node3.node();  // the trace's SVG group
          const drawn = group.querySelectorAll('path.point').length;
          out[t.meta.slice(5)] = drawn === t.x.length ? Array.from(t.x) : ['drawn: ' + drawn];
        });
        return out;
    }""", chart)
    return got


def pick_scale(pg: Any, scale: str) -> None:
    pg.locator(f"#loss-scale button[data-scale='{scale}']").click()
    pg.wait_for_function("s => document.querySelector(`#loss-scale button[aria-pressed='true']`)"
                         ".dataset.scale === s && document.getElementById('chart-loss')._fullLayout"
                         ".yaxis.title.text.includes(s === 'linear' ? 'loss' : s)", arg=scale)
    pg.evaluate("window.trainvitals.settled()")


def pressed(pg: Any) -> str:
    return str(pg.locator("#loss-scale button[aria-pressed='true']").get_attribute("data-scale"))


@pytest.mark.browser
def test_loss_scale_shows_the_history_before_an_explosion_and_is_kept_per_run(
        server: Server, open_page: Any) -> None:
    rid, other = server.run_id(EXPLODES), server.run_id(CALM)
    pg = open_page(LAPTOP, f"#run={rid}")
    early = range(0, EXPLODE_FROM, 9)  # loss 100 → 0.01: four decades before the explosion
    assert pressed(pg) == "linear"
    ys = pixel_ys(pg, "chart-loss", "s:loss#0", early)
    assert max(ys) - min(ys) < 1, ys  # linear: flattened to one line by the 4e33
    expected = {"nan": [NAN_STEP], "posinf": [INF_STEP]}
    assert edge_points(pg, "chart-loss") == expected
    spreads = {}
    for scale in ("log", "symlog"):
        pick_scale(pg, scale)
        ys = pixel_ys(pg, "chart-loss", "s:loss#0", early)
        assert ys == sorted(ys), (scale, ys)  # the falling loss falls (screen y grows downwards)
        spreads[scale] = max(ys) - min(ys)
        # NaN and +Inf still have their markers on this scale.
        assert edge_points(pg, "chart-loss") == expected, scale
    # 4 of the axis's ~37 decades (0.0025 to 4e33): over ten pixels, where linear had none.
    assert all(spread > 10 for spread in spreads.values()), spreads
    # symlog ticks are labelled in the loss's own units, and reach the explosion.
    ticks = pg.evaluate("document.getElementById('chart-loss')._fullLayout.yaxis.ticktext")
    assert "10<sup>33</sup>" in ticks[-1] or "10<sup>34</sup>" in ticks[-1], ticks

    pg.reload()
    ready(pg)
    assert pressed(pg) == "symlog"  # remembered for this run ...
    assert "symlog" in pg.evaluate(
        "document.getElementById('chart-loss')._fullLayout.yaxis.title.text")
    pg.evaluate(f"location.hash = '#run={other}'")
    pg.wait_for_selector(f"#run-view[data-state='ready'][data-run-id='{other}']")
    ready(pg)
    assert pressed(pg) == "linear"  # ... not for another
    pick_scale(pg, "log")
    pg.evaluate(f"location.hash = '#run={rid}'")
    pg.wait_for_selector(f"#run-view[data-state='ready'][data-run-id='{rid}']")
    ready(pg)
    assert pressed(pg) == "symlog"
    pick_scale(pg, "linear")
    ys = pixel_ys(pg, "chart-loss", "s:loss#0", early)
    assert max(ys) - min(ys) < 1


@pytest.mark.browser
def test_count_axis_ticks_are_whole_numbers(server: Server, open_page: Any) -> None:
    pg = open_page(LAPTOP, f"#run={server.run_id(EXPLODES)}")
    chart = "chart-tensor-depth"
    pg.wait_for_function("id => document.getElementById(id)._fullLayout.yaxis3.visible", arg=chart)
    assert max(pg.evaluate("""id => Array.from(document.getElementById(id).data
        .find(t => t.meta === 's:tensor/depth/nan#0').y)""", chart)) == 3
    labels = pg.evaluate("id => [...document.querySelectorAll(`#${id} .y3tick text`)]"
                         ".map(t => t.textContent)", chart)
    assert len(labels) >= 3, labels
    assert all(label.isdigit() for label in labels), labels
    assert [int(x) for x in labels] == sorted({int(x) for x in labels})


@pytest.mark.browser
def test_compare_header_says_how_the_runs_differ(server: Server, open_page: Any) -> None:
    a, b = "cmp-hdr-seed1", "cmp-hdr-seed2"
    config = {"lr": 3e-4, "model": {"depth": 4, "head": "exp"}, "note": XSS}
    server.run(a, range(30), config={**config, "seed": 1},
               tensors=lambda n: {XSS: stats(n, 5 if n >= 12 else 0)})  # NaN elements: an incident
    server.run(b, range(40), config={**config, "seed": 2}, loss=lambda n: 1.0 / (1 + n))
    ida, idb = server.run_id(a), server.run_id(b)
    (incident, *_) = server.get(f"/api/runs/{ida}/incidents")["incidents"]
    assert server.get(f"/api/runs/{idb}/incidents")["incidents"] == []

    pg = open_page(LAPTOP, f"#compare={ida},{idb}")
    table = pg.locator("#compare-table table")
    heads = table.locator("thead th.run")
    assert [heads.nth(i).get_attribute("data-run-id") for i in range(2)] == [str(ida), str(idb)]
    assert table.locator("thead th.run a").all_inner_texts() == [a, b]
    # Only the key that differs, with each run's value.
    diff = table.locator("tr.config-diff")
    assert [diff.nth(i).get_attribute("data-key") for i in range(diff.count())] == ["seed"]
    assert diff.locator("td").all_inner_texts() == ["1", "2"]

    def cell(row: str, run: int) -> Any:
        return table.locator(f"tr.{row} td[data-run-id='{run}']")

    first = cell("first-incident", ida)
    assert first.locator(".headline").inner_text() == incident["headline"]
    assert XSS in incident["headline"] and XSS in first.inner_text()  # the tensor's name: text
    assert first.locator(".onset").get_attribute("data-step") == str(incident["onset_step"]) == "12"
    assert "onset step 12" in first.inner_text()
    assert cell("first-incident", idb).inner_text() == "none"
    assert cell("final-loss", ida).inner_text() == "0.5128 at step 29"  # 2 / (1 + 0.1 * 29)
    assert cell("final-loss", idb).inner_text() == "0.025 at step 39"  # 1 / 40
    assert [cell("last-step", r).inner_text() for r in (ida, idb)] == ["29", "39"]

    # Live: b gets a NaN loss, and its first incident appears; its last values move on.
    server.run(b, range(40, 46), loss=lambda n: NAN if n == 44 else 1.0 / (1 + n))
    pg.wait_for_function("id => document.querySelector("
                         "`#compare-table tr.first-incident td[data-run-id='${id}'] .headline`)",
                         arg=idb)
    (nan_incident,) = server.get(f"/api/runs/{idb}/incidents")["incidents"]
    assert cell("first-incident", idb).locator(".onset").get_attribute("data-step") == "44"
    assert cell("first-incident", idb).locator(".headline").inner_text() == nan_incident["headline"]
    pg.wait_for_function("id => document.querySelector(`#compare-table tr.last-step"
                         " td[data-run-id='${id}']`).textContent === '45'", arg=idb)
    assert cell("final-loss", idb).inner_text() == f"{1 / 46:.4g} at step 45"

    # Every piece of user text went in as text.
    assert pg.evaluate("document.querySelectorAll('#run-view img').length") == 0

    # The comparison's loss chart has the scale switch too, remembered for this comparison.
    pick_scale(pg, "log")
    pg.reload()
    ready(pg)
    assert pressed(pg) == "log"
    assert pg.evaluate("document.getElementById('chart-loss')._fullLayout.yaxis.type") == "log"


@pytest.mark.browser
def test_crosshair_marks_the_same_step_on_every_chart(server: Server, open_page: Any) -> None:
    pg = open_page(LAPTOP, f"#run={server.run_id(SEED1)}")
    charts = pg.evaluate("[...document.querySelectorAll('#run-view .chart')].map(c => c.id)")
    assert len(charts) == 4

    def hover(chart: str, fraction: float) -> None:
        box = pg.evaluate("""([id, f]) => { const el = document.getElementById(id);
            const r = el.getBoundingClientRect(), s = el._fullLayout._size;
            return {x: r.left + s.l + f * s.w, y: r.top + s.t + s.h / 2}; }""", [chart, fraction])
        pg.mouse.move(box["x"], box["y"])

    def crosshairs() -> list[dict[str, Any]]:
        got: list[dict[str, Any]] = pg.evaluate("""() => [...document.querySelectorAll(
            '#run-view figure.chart-card')].map(f => {
              const c = f.querySelector('.crosshair'), el = f.querySelector('.chart');
              const r = c.getBoundingClientRect(), p = el.getBoundingClientRect();
              const s = el._fullLayout._size, xa = el._fullLayout.xaxis;
              return {step: c.hidden ? null : c.dataset.step, x: r.left,
                      at: c.hidden ? null : p.left + s.l + xa.l2p(Number(c.dataset.step)),
                      visible: !c.hidden && r.height > 0};
            })""")
        return got

    for chart, fraction in [("chart-loss", 0.5), ("chart-tensor-points3d", 0.25)]:
        hover(chart, fraction)
        pg.wait_for_function("""n => { const steps = [...document.querySelectorAll(
            '#run-view .crosshair')].map(c => c.hidden ? null : c.dataset.step);
            return steps.length === n && steps[0] !== null
              && steps.every(s => s === steps[0]); }""",
            arg=len(charts))
        marks = crosshairs()
        assert all(m["visible"] for m in marks), marks
        assert len({m["step"] for m in marks}) == 1, marks
        step = int(marks[0]["step"])
        assert abs(step - round(fraction * 59)) <= 1, (fraction, step)
        for m in marks:  # each line is where that chart draws the step
            assert abs(m["x"] - m["at"]) <= 1.5, m
    pg.mouse.move(5, 5)  # off the charts: the crosshair goes
    pg.wait_for_function("() => [...document.querySelectorAll('#run-view .crosshair')]"
                         ".every(c => c.hidden)")
