"""Regenerate the README's dashboard screenshots from the demo, never by hand.

Starts a server on a temporary data directory, trains the demo's ``exp`` run (a learning-rate
spike, then the ×0 clip silently stalls it) and its ``softplus`` twin (recovers) against it with
the public ``trainvitals.Monitor``, opens the run pages and the comparison in headless Chromium
and saves PNGs:

    docs/img/dashboard-stalled.png   the stalled run: incidents, health, charts side by side
    docs/img/dashboard-healthy.png   the softplus run, same spike, recovered
    docs/img/dashboard-compare.png   both runs overlaid, aligned by step, under how they differ
    docs/img/dashboard-wide.png      the stalled run on a 2,560 px screen: three charts a row

at 1,440 × 900 (the wide one at 2,560 × 1,440), as a laptop and a desktop monitor show them.

    .venv/bin/python scripts/screenshots.py [--out docs/img] [--steps N]

Needs Debian's Chromium at /usr/bin/chromium (``scripts/install --browser``) and takes about a
minute on a laptop CPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx
from playwright.sync_api import sync_playwright

sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # for tests.support
from tests.support.browser import launch
from trainvitals import Monitor
from trainvitals.demo.launch import variant_config
from trainvitals.demo.train import train
from trainvitals.server import ServerThread, Settings
from trainvitals.server.security import new_token

RUNS = {"demo-exp": "exp", "demo-softplus": "softplus"}  # run name -> demo variant
LAPTOP = {"width": 1440, "height": 900}
WIDE = {"width": 2560, "height": 1440}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path,
                        default=Path(__file__).resolve().parents[1] / "docs" / "img")
    parser.add_argument("--steps", type=int, default=None, help="steps per run (demo default)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="trainvitals-shots-") as data:
        settings = Settings(port=0, data_dir=Path(data), ingest_token=new_token(16),
                            log_alerts=False)
        with ServerThread(settings) as server:
            ids = {name: train_run(server, settings, name, variant, args.steps)
                   for name, variant in RUNS.items()}
            shots = shoot(server.http_url, ids, args.out)
    for path in shots:
        print(path)
    return 0


def train_run(server: ServerThread, settings: Settings, name: str, variant: str,
              steps: int | None) -> int:
    """Train one demo variant against the server; returns the run's id."""
    config = variant_config(variant, steps)
    print(f"training {name} ({variant}, {config.steps} steps)…", file=sys.stderr, flush=True)
    with Monitor(name, server=server.ws_url, token=settings.ingest_token, spool=None,
                 config=dataclasses.asdict(config)) as monitor:
        result = train(config, monitor)
        if not monitor.flush(30):
            raise SystemExit(f"{name}: the server did not acknowledge every record")
        monitor.close(status=result.status, reason=result.reason)  # type: ignore[arg-type]
    runs = httpx.get(f"{server.http_url}/api/runs", timeout=30).json()["runs"]
    return int(next(r["id"] for r in runs if r["name"] == name))


def shoot(url: str, ids: dict[str, int], out: Path) -> list[Path]:
    """Open each view in headless Chromium once it has settled and save a PNG of it."""
    exp, softplus = ids["demo-exp"], ids["demo-softplus"]
    views = [("dashboard-stalled.png", f"#run={exp}", LAPTOP),
             ("dashboard-healthy.png", f"#run={softplus}", LAPTOP),
             ("dashboard-compare.png", f"#compare={exp},{softplus}", LAPTOP),
             ("dashboard-wide.png", f"#run={exp}", WIDE)]
    saved = []
    with sync_playwright() as pw:
        browser = launch(pw)
        for file, route, viewport in views:
            page = browser.new_page(viewport=viewport, device_scale_factor=1)
            page.set_default_timeout(60_000)
            page.goto(f"{url}/{route}")
            page.wait_for_selector("#run-view[data-state='ready']")
            if route.startswith("#run="):
                page.wait_for_selector("#health:not([data-level='unknown'])")
            settle(page)
            saved.append(out / file)
            page.screenshot(path=str(saved[-1]), full_page=False)
            page.close()
        browser.close()
    return saved


def settle(page: Any) -> None:
    """Wait until charts are drawn and the fonts and layout have come to rest."""
    page.evaluate("window.trainvitals.settled()")
    page.wait_for_function("() => [...document.querySelectorAll('.chart')].every(el =>"
                           " el.classList.contains('js-plotly-plot') && el._fullLayout"
                           " && Math.abs(el._fullLayout.width - el.clientWidth) < 1)")
    page.wait_for_timeout(500)


if __name__ == "__main__":
    raise SystemExit(main())
