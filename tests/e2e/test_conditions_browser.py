"""Conditions on the dashboard: headless Chromium against a real server (``pytest -m browser``).

The server's data directory is on a real 64 MiB tmpfs (root needed: it skips with the reason
where mount fails), in a folder named like markup. Filling the disk below the free-space floor
opens ``storage_full``: the banner appears above every view, critical, with the headline (it
names the folder: shown as text, never as markup) and "Try: …"; deleting the filler resolves
it and the banner goes — both live, over the viewer websocket. A trainer that reports an old
backlog opens ``spool_backlog`` on its run before the page is opened: the run's header shows
it from the first ``GET /api/conditions``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.sync.client import connect

from tests.support.tmpfs import CannotMount, SmallDisk
from tests.support.waiting import poll_until
from trainvitals.protocol import Batch, RunStart, Step, encode
from trainvitals.protocol.messages import Backlog
from trainvitals.server import ServerThread, Settings

INGEST_TOKEN = "ingest-token-conditions"
MiB = 1 << 20
XSS = "<img src=x onerror=alert(1)>"
TIMEOUT_MS = 45_000  # generous: CI machines may be busy; waits end as soon as they can
BANNER = "#conditions .condition[data-kind='storage_full'][data-severity='critical']"


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[SmallDisk]:
    small = SmallDisk(tmp_path / "disk", 64 * MiB)
    try:
        small.mount()
    except CannotMount as exc:
        pytest.skip(f"no small filesystem to fill: {exc}")
    try:
        yield small
    finally:
        small.unmount()


@pytest.fixture
def server(disk: SmallDisk) -> Iterator[ServerThread]:
    settings = Settings(port=0, data_dir=disk.path / XSS / "data", ingest_token=INGEST_TOKEN,
                        log_alerts=False, min_free_bytes=8 * MiB, health_interval=0.2,
                        backlog_warn_s=30)
    with ServerThread(settings) as srv:
        yield srv


def behind(srv: ServerThread, run: str) -> int:
    """A trainer whose spool holds 40 records the server does not have, the oldest 2 min old;
    the run's id."""
    with connect(f"{srv.ws_url}/ws/ingest", additional_headers={
            "Authorization": f"Bearer {INGEST_TOKEN}"}, open_timeout=10, proxy=None) as ws:
        ws.send(encode(Batch((RunStart(run=run, session="s", time=time.time()),
                              Step(run=run, session="s", seq=1, step=0, time=time.time(),
                                   loss=1.0)),
                             0, Backlog(records=41, bytes=41_000, max_bytes=64 * MiB,
                                        oldest_age=120.0, last_seq=41))))
        assert json.loads(ws.recv(timeout=10))["seq"] == 1
    runs = httpx.get(f"{srv.http_url}/api/runs", timeout=10).json()["runs"]
    return int(next(r["id"] for r in runs if r["name"] == run))


def banner(pg: Any) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = pg.evaluate("""() =>
      [...document.querySelectorAll('#conditions .condition')].map(c => ({
        ...c.dataset, text: c.textContent,
        headline: c.querySelector('.condition-headline').textContent,
        remedy: c.querySelector('.condition-remedy')?.textContent ?? null,
        colour: getComputedStyle(c).backgroundColor}))""")
    return found


@pytest.mark.browser
def test_the_banner_shows_a_full_disk_above_every_view_and_goes_when_space_returns(
        browser: Any, server: ServerThread, disk: SmallDisk) -> None:
    rid = behind(server, "behind-run")
    context = browser.new_context(viewport={"width": 1440, "height": 900})
    pg = context.new_page()
    pg.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    dialogs: list[str] = []
    pg.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    try:
        pg.goto(f"{server.http_url}/#run={rid}")
        pg.wait_for_selector(f"#run-view[data-state='ready'][data-run-id='{rid}']")
        pg.wait_for_selector("#live-status[data-state='live']")
        # The run's own trouble, in its header, from the first GET /api/conditions.
        line = pg.wait_for_selector(
            "#run-view .run-header .run-conditions .condition[data-kind='spool_backlog']")
        assert line.get_attribute("data-severity") == "warning"
        assert line.text_content().startswith("warningspool backlogrank 0 has 40 record(s)")
        assert "Try: the trainer keeps what the server has not stored" in line.text_content()
        assert pg.locator("#conditions").is_hidden() and banner(pg) == []

        disk.fill(leave=3 * MiB)  # below the 8 MiB floor: live, over the viewer socket
        pg.wait_for_selector(BANNER, state="visible")
        (shown,) = banner(pg)
        assert shown["scope"] == "server" and shown["condition"].startswith(
            "server:storage_full#")
        assert shown["headline"].startswith("storage full: new records are refused (trainers "
                                            "keep them): ")
        assert f"/{XSS}/data (the server keeps 8.0 MiB free" in shown["headline"]  # as text
        assert shown["remedy"].startswith("Try: free space on the data directory's disk")
        assert shown["colour"] == "rgb(254, 226, 226)"  # --critical-bg
        assert pg.locator("#conditions img").count() == 0 and dialogs == []
        # Above the view, and above every view: the runs-only page too.
        assert pg.evaluate("""() => document.getElementById('conditions').getBoundingClientRect()
          .bottom <= document.getElementById('run-view').getBoundingClientRect().top""")
        pg.evaluate("() => { window.location.hash = ''; }")
        pg.wait_for_selector("#run-view[data-state='empty']")
        assert pg.locator(BANNER).is_visible()

        disk.unfill()  # space returns: resolved, live
        pg.wait_for_selector("#conditions", state="hidden")
        assert banner(pg) == []
        assert errors == [] and dialogs == []
    finally:
        context.close()


@pytest.mark.browser
def test_a_page_opened_while_the_disk_is_full_shows_the_banner_at_once(
        browser: Any, server: ServerThread, disk: SmallDisk) -> None:
    disk.fill(leave=3 * MiB)
    poll_until(lambda: httpx.get(f"{server.http_url}/readyz", timeout=10).status_code == 503,
               "the server to notice the full disk")
    context = browser.new_context(viewport={"width": 1440, "height": 900})
    pg = context.new_page()
    pg.set_default_timeout(TIMEOUT_MS)
    try:
        pg.goto(f"{server.http_url}/")
        pg.wait_for_selector(BANNER, state="visible")  # from GET /api/conditions?state=open
        hooks = pg.evaluate("() => window.trainvitals.conditions.map(c => c.kind)")
        assert hooks == ["storage_full"]
        disk.unfill()
        pg.wait_for_selector("#conditions", state="hidden")
    finally:
        context.close()
