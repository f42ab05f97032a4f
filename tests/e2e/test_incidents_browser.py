"""Incidents on the dashboard: headless Chromium against a real server (``pytest -m browser``).

Steps go in the real way — protocol records over the ingest websocket, with the ingest token —
so the server's own rules and incident engine judge them. One planted failure (a NaN loss whose
components, used loss and gradient norms are NaN on the same step) fires many alerts and makes
one incident: the run view shows one card for it (headline, remedy, onset, evidence), which
zooms the charts to its onset; cards open, escalate and resolve live; the runs list, the toasts,
the desktop notification and the tab title count incidents, not alerts; a headline that
carries markup (from a tensor's name) is text. Each test gets a server of its own, so counts
are exact. The exported report's cards are held to the page's in tests/server/test_report.py.
"""

from __future__ import annotations

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

INGEST_TOKEN = "ingest-token-incidents"
VIEW_TOKEN = "view-token-incidents"
NAN, INF = math.nan, math.inf
XSS = "<img src=x onerror=alert(1)>"
TIMEOUT_MS = 45_000  # generous: CI machines may be busy; waits end as soon as they can
ZOOMED = """([id, first, last]) => { const l = document.getElementById(id)._fullLayout;
  const [a, b] = l.xaxis.range; return a <= first && last <= b && b - a < 80
    && l.shapes.length === 1 && l.shapes[0].x0 === first; }"""


@dataclass
class Server:
    url: str
    ws: str
    seq: dict[str, int] = field(default_factory=dict)  # last seq sent, per run

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

    def steps(self, run: str, steps: range, bad: tuple[int, ...] = (),
              **fields: Any) -> None:
        """Steps of a learning run; on each ``bad`` step the loss, its components, the used
        loss and both gradient norms are NaN (one cause, many alerts)."""
        records: list[Record] = []
        if run not in self.seq:
            self.seq[run] = 0
            records.append(RunStart(run=run, session="s", time=time.time()))
        for n in steps:
            self.seq[run] += 1
            nan = n in bad
            loss = NAN if nan else 2.0 - 0.01 * n
            records.append(Step(
                run=run, session="s", seq=self.seq[run], step=n, time=time.time(), loss=loss,
                loss_used=loss, components={"ce": NAN if nan else 1.5, "kl": NAN if nan else 0.5},
                grad_norm=NAN if nan else 1.0, grad_norm_post=NAN if nan else 1.0, **fields))
        self.ingest(records)

    def run_id(self, name: str) -> int:
        return int(next(r["id"] for r in self.get("/api/runs")["runs"] if r["name"] == name))

    def incidents(self, name: str) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = self.get(f"/api/runs/{self.run_id(name)}/incidents")[
            "incidents"]
        return found

    def alerts(self, name: str) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = self.get("/api/alerts", run=name)["alerts"]
        return found


@dataclass
class PageLog:
    """What the page said that it should not have: console errors, uncaught errors, dialogs."""

    errors: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)


@pytest.fixture
def server(tmp_path: Any) -> Iterator[Server]:
    settings = Settings(port=0, data_dir=tmp_path / "data", ingest_token=INGEST_TOKEN,
                        view_token=VIEW_TOKEN, log_alerts=False)
    with ServerThread(settings) as srv:
        yield Server(srv.http_url, srv.ws_url)


@pytest.fixture
def page(browser: Any, server: Server) -> Iterator[tuple[Any, PageLog]]:
    """A page allowed to notify, that believes it is not in focus (the user looks elsewhere)."""
    context = browser.new_context(viewport={"width": 1600, "height": 1000})
    context.grant_permissions(["notifications"], origin=server.url)
    context.add_init_script("Object.defineProperty(document, 'hasFocus', {value: () => false})")
    pg = context.new_page()
    pg.set_default_timeout(TIMEOUT_MS)
    log = PageLog()
    pg.on("console", lambda m: log.errors.append(f"console: {m.text}")
          if m.type == "error" else None)
    pg.on("pageerror", lambda e: log.errors.append(f"pageerror: {e}"))

    def on_dialog(dialog: Any) -> None:
        log.dialogs.append(f"{dialog.type}: {dialog.message}")
        dialog.dismiss()

    pg.on("dialog", on_dialog)
    yield pg, log
    context.close()


def open_run(pg: Any, server: Server, rid: int) -> None:
    pg.goto(f"{server.url}/?token={VIEW_TOKEN}#run={rid}")
    shown(pg, rid)


def shown(pg: Any, rid: int) -> None:
    """Wait until the run view shows run ``rid``, loaded."""
    pg.wait_for_selector(f"#run-view[data-state='ready'][data-run-id='{rid}']")


def cards(pg: Any) -> list[dict[str, Any]]:
    """The incident cards in page order: their data attributes and texts."""
    result: list[dict[str, Any]] = pg.evaluate("""() =>
      [...document.querySelectorAll('#incidents article.incident')].map(c => ({
        ...c.dataset, opacity: Number(getComputedStyle(c).opacity),
        headline: c.querySelector('.incident-headline').textContent,
        remedy: c.querySelector('.incident-remedy')?.textContent ?? null,
        state_text: c.querySelector('.incident-state').textContent,
        onset: c.querySelector('.onset').textContent,
        escalation: c.querySelector('.escalation')?.textContent ?? null,
        rank: c.querySelector('.incident-meta .rank')?.textContent ?? null,
        evidence_count: c.querySelector('.evidence-count').textContent}))""")
    return result


def no_mark(pg: Any) -> bool:
    """Whether no chart is zoomed or marked (after everything queued is drawn)."""
    result: bool = pg.evaluate("""() => window.trainvitals.settled().then(() =>
      [...document.querySelectorAll('.js-plotly-plot')].every(el =>
        el._fullLayout.shapes.length === 0 && el._fullLayout.xaxis.autorange === true))""")
    return result


def chart_ids(pg: Any) -> list[str]:
    ids: list[str] = pg.evaluate(
        "() => [...document.querySelectorAll('.js-plotly-plot')].map(el => el.id)")
    return ids


def runs_cell(pg: Any, rid: int) -> Any:
    return pg.locator(f"#runs tr[data-run-id='{rid}'] td.incidents")


@pytest.mark.browser
def test_one_planted_failure_is_one_card_with_its_evidence_and_zooms_to_its_onset(
        server: Server, page: tuple[Any, PageLog]) -> None:
    pg, log = page
    server.steps("nan-once", range(0, 32), bad=(30,))  # one finite step after: still open
    alerts = server.alerts("nan-once")
    (incident,) = server.incidents("nan-once")  # many alerts, one incident
    assert len(alerts) >= 6 and incident["evidence_count"] == len(alerts)
    assert (incident["onset_step"], incident["state"], incident["severity"]) == (
        30, "open", "critical")
    rid = server.run_id("nan-once")
    open_run(pg, server, rid)

    (card,) = cards(pg)
    assert (card["incident"], card["severity"], card["state"], card["step"]) == (
        "nan-once#1", "critical", "open", "30")
    assert card["headline"] == incident["headline"] != ""
    assert card["remedy"] == f"Try: {incident['remedy']}"
    assert (card["onset"], card["escalation"], card["rank"]) == ("onset step 30", None, None)
    assert card["evidence_count"] == str(len(alerts)) and card["state_text"] == "open"
    # The cards come first: above the health words, the charts and the list of every alert.
    order = pg.evaluate("""() => ['#incidents', '#health', '.charts', '#alerts'].map(s =>
        document.querySelector(s).getBoundingClientRect().top)""")
    assert order == sorted(order)
    assert pg.locator("#alerts li").count() == len(alerts)  # the alerts panel stays, below

    # The evidence opens from its expander, and that does not zoom.
    el = pg.locator("#incidents article.incident")
    assert not el.locator(".evidence-list").is_visible()
    el.locator(".incident-evidence summary").click()
    items = el.locator(".evidence-list li")
    items.first.wait_for()
    assert items.count() == len(alerts)
    shown = pg.evaluate("""() => [...document.querySelectorAll('#incidents .evidence-list li')]
        .map(li => [li.dataset.series, li.dataset.rule, li.dataset.step,
                    li.querySelector('.message').textContent])""")
    assert sorted(shown) == sorted([a["series"], a["rule"], str(a["first_step"]), a["message"]]
                                   for a in alerts)
    assert no_mark(pg)

    # A click on the card zooms every chart to around the onset, marked.
    el.locator(".incident-headline").click()
    charts = chart_ids(pg)
    assert {"chart-loss", "chart-grad"} <= set(charts)
    for chart in charts:
        pg.wait_for_function(ZOOMED, arg=[chart, 30, 30])
    assert el.get_attribute("aria-current") == "true"
    assert el.locator(".evidence-list").is_visible()  # still open
    assert log.errors == [] and log.dialogs == []


@pytest.mark.browser
def test_cards_open_live_and_grey_when_their_cause_resolves(
        server: Server, page: tuple[Any, PageLog]) -> None:
    pg, log = page
    run = "live-nan"
    server.steps(run, range(0, 10))
    rid = server.run_id(run)
    open_run(pg, server, rid)
    assert cards(pg) == [] and pg.locator("#incidents").is_hidden()
    assert runs_cell(pg, rid).inner_text() == "—"

    server.steps(run, range(10, 12), bad=(10,))  # while the page watches
    pg.wait_for_selector("#incidents article.incident[data-state='open']")
    (incident,) = server.incidents(run)
    (card,) = cards(pg)
    assert (card["incident"], card["step"], card["headline"]) == (
        f"{run}#1", "10", incident["headline"])
    assert card["evidence_count"] == str(incident["evidence_count"])
    pg.wait_for_function("id => document.querySelector(`#runs tr[data-run-id='${id}'] "
                         "td.incidents [data-severity='critical']`)?.textContent === '1'", arg=rid)
    assert runs_cell(pg, rid).locator("[data-severity]").count() == 1

    server.steps(run, range(12, 20))  # finite again: every finding resolves, so the incident
    pg.wait_for_selector("#incidents article.incident[data-state='resolved']")
    (incident,) = server.incidents(run)
    (card,) = cards(pg)
    assert incident["state"] == "resolved"
    assert card["state_text"] == f"resolved at step {incident['resolved_step']}"
    assert card["opacity"] < 1  # greyed, still there
    pg.wait_for_function("id => !document.querySelector(`#runs tr[data-run-id='${id}'] "
                         "td.incidents [data-severity]`)", arg=rid)
    assert runs_cell(pg, rid).inner_text() == "1 resolved"

    server.steps(run, range(20, 22), bad=(20,))  # the cause again: a new incident, on top
    pg.wait_for_selector("#incidents article.incident[data-state='open']")
    assert [(c["incident"], c["state"]) for c in cards(pg)] == [
        (f"{run}#2", "open"), (f"{run}#1", "resolved")]
    assert [i["number"] for i in server.incidents(run)] == [1, 2]
    assert pg.evaluate("window.trainvitals.draws('chart-loss')") == 1  # live: no reload
    assert log.errors == [] and log.dialogs == []


@pytest.mark.browser
def test_toasts_notifications_title_and_runs_list_count_incidents_not_alerts(
        server: Server, page: tuple[Any, PageLog]) -> None:
    pg, log = page
    server.steps("watched", range(0, 10))
    open_run(pg, server, server.run_id("watched"))  # follows another run
    assert pg.title() == "trainvitals"

    server.steps("elsewhere", range(0, 5), bad=(2,))
    rid = server.run_id("elsewhere")
    toast = pg.locator(".toast[data-run='elsewhere']")
    toast.wait_for()
    (incident,) = server.incidents("elsewhere")
    critical_alerts = [a for a in server.alerts("elsewhere") if a["severity"] == "critical"]
    assert len(critical_alerts) >= 6  # an alert-counting page would say 6, and toast 6 times
    assert toast.get_attribute("data-incident") == "elsewhere#1"
    assert toast.get_attribute("data-severity") == "critical"
    assert toast.locator(".toast-message").inner_text() == incident["headline"]
    pg.wait_for_function("() => document.title === '(1) trainvitals'")
    assert pg.locator(".toast").count() == 1
    assert pg.evaluate("window.trainvitals.toasts") == 1
    assert pg.evaluate("window.trainvitals.notifications") == 1
    row = runs_cell(pg, rid)
    row.locator("[data-severity='critical']").wait_for()
    assert row.locator("[data-severity='critical']").inner_text() == "1"

    # The toast leads to the run and its card.
    toast.locator(".toast-run").click()
    shown(pg, rid)
    assert [c["incident"] for c in cards(pg)] == ["elsewhere#1"]
    assert pg.locator(".toast").count() == 0
    assert log.errors == [] and log.dialogs == []


def fp16(mx: float, *, inf: int = 0) -> dict[str, TensorStats]:
    """A float16 pre-activation of exp: headroom is what is left before 11.09 overflows."""
    return {"depth_raw": TensorStats(count=64, nan=0, posinf=inf, neginf=0, min=-1.0, max=mx,
                                     mean=0.5, absmax=mx, dtype="float16",
                                     headroom=11.09 - mx)}


@pytest.mark.browser
def test_a_warning_that_fails_escalates_its_toast_and_card(
        server: Server, page: tuple[Any, PageLog]) -> None:
    pg, log = page
    server.steps("watched", range(0, 3))
    open_run(pg, server, server.run_id("watched"))
    run = "fp16-exp"
    for n in range(8):  # close to overflow from step 0: a warning
        server.ingest([*([RunStart(run=run, session="s", time=time.time())] if n == 0 else []),
                       Step(run=run, session="s", seq=n + 1, step=n, time=time.time(), loss=1.0,
                            loss_used=1.0, grad_norm=1.0, tensors=fp16(9.5))])
    toast = pg.locator(f".toast[data-incident='{run}#1']")
    toast.wait_for()
    assert toast.get_attribute("data-severity") == "warning"
    assert pg.evaluate("window.trainvitals.notifications") == 0  # warnings do not notify
    assert pg.title() == "trainvitals"  # the title counts critical incidents only

    server.ingest([Step(run=run, session="s", seq=9, step=8, time=time.time(), loss=INF,
                        loss_used=INF, grad_norm=NAN, tensors=fp16(11.5, inf=3))])
    pg.wait_for_selector(f".toast[data-incident='{run}#1'][data-change='escalated']")
    (incident,) = server.incidents(run)
    assert (incident["state"], incident["onset_step"], incident["escalated_step"]) == (
        "escalated", 0, 8)
    assert pg.locator(".toast").count() == 1  # the same toast, now critical
    assert toast.get_attribute("data-severity") == "critical"
    assert toast.locator(".toast-message").inner_text() == incident["headline"]
    assert pg.evaluate("window.trainvitals.notifications") == 1
    pg.wait_for_function("() => document.title === '(1) trainvitals'")

    toast.locator(".toast-run").click()
    shown(pg, server.run_id(run))
    (card,) = cards(pg)
    assert (card["state"], card["severity"], card["kind"]) == ("escalated", "critical",
                                                              incident["kind"])
    assert card["escalation"] == "warned at step 0, failed at step 8"
    pg.locator("#incidents article.incident").click()
    for chart in chart_ids(pg):  # from the warning to the failure
        pg.wait_for_function(ZOOMED, arg=[chart, 0, 8])
    assert log.errors == [] and log.dialogs == []


@pytest.mark.browser
def test_a_headline_with_markup_in_it_is_text_and_runs_nothing(
        server: Server, page: tuple[Any, PageLog]) -> None:
    pg, log = page
    run = "<b>bold run</b>"
    server.steps("watched", range(0, 3))
    open_run(pg, server, server.run_id("watched"))
    bad = TensorStats(count=4, nan=4, posinf=0, neginf=0, min=0.0, max=1.0, mean=0.5, absmax=1.0)
    fine = TensorStats(count=4, nan=0, posinf=0, neginf=0, min=0.0, max=1.0, mean=0.5, absmax=1.0)
    server.steps(run, range(0, 3), tensors={XSS: fine})
    server.steps(run, range(3, 4), tensors={XSS: bad})  # the tensor named like markup goes NaN
    (incident,) = server.incidents(run)
    assert XSS in incident["headline"]

    toast = pg.locator(f".toast[data-incident='{run}#1']")  # a toast of another run: as text
    toast.wait_for()
    assert toast.locator(".toast-run").inner_text() == run
    assert toast.locator(".toast-message").inner_text() == incident["headline"]
    toast.locator(".toast-run").click()
    shown(pg, server.run_id(run))
    (card,) = cards(pg)
    assert card["headline"] == incident["headline"]
    pg.locator("#incidents .incident-evidence summary").click()
    series = pg.locator("#incidents .evidence-list li .series").all_inner_texts()
    assert f"tensor/{XSS}" in series
    assert any(XSS in m for m in pg.locator("#incidents .evidence-list .message").all_inner_texts())
    assert pg.evaluate("document.querySelectorAll('img, b, [onerror]').length") == 0
    pg.wait_for_timeout(300)  # time for a (wrongly) injected onerror handler to run: none may
    assert log.dialogs == [] and log.errors == []
