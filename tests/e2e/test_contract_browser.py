"""JavaScript and Python agree on the series-name grammar.

The page parses series names with ``frontend/series.js`` from the contract it loads
(``/static/contract.json``, written by ``trainvitals.protocol.contract``); the exported report
does the same from the copy inlined in it. Here both run in headless Chromium (marked
``browser``) on names chosen to trip a parser up, and each answer must equal
``trainvitals.protocol.series.parse_series`` for the same name. A page served a changed
contract must parse by it: the grammar is read, not hard-coded.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from trainvitals.protocol import RunStart, Step
from trainvitals.protocol.contract import contract
from trainvitals.protocol.series import parse_series
from trainvitals.server import ServerThread, Settings, SQLiteStore

TIMEOUT_MS = 45_000
TRICKY = [
    # the step's own fields, and names that only look like them
    "loss", "loss_used", "grad_norm", "grad_norm_post", "lr", "Loss", " loss", "loss ", "",
    "lossy", "loss_usedx", "grad_norm/x", "lr/group0", "update/model.head",
    # components and scalars: everything after the prefix is the name, slashes and all
    "loss/", "loss/points", "loss/a/b", "loss/tensor/x/max", "loss/<b>x</b>", "loss/😀",
    "scalar/", "scalar/update/model.head", "scalar/lr/group0", "scalar/tensor/x/max",
    "scalar/normalisation/mean_dist/eps",
    # tensors: the stat is the last part, the tensor's own name may hold '/'
    "tensor/depth/max", "tensor/head/depth_raw/min", "tensor/a/b/c/headroom",
    "tensor/tensor/max", "tensor/ depth /mean", "tensor/深度/nan", "tensor/a😀/b/posinf",
    "tensor/x/count", "tensor/x/absmax", "tensor/\u2028/neginf", "tensor/</script>/max",
    # not tensors after all: unknown, empty or missing parts, inherited property names
    "tensor/x/nonsense", "tensor/x/MAX", "tensor/max", "tensor//max", "tensor/x/",
    "tensor/x/max/", "tensor/", "tensor", "tensor/x/__proto__", "tensor/x/constructor",
    "tensor/x/toString", "tensor/x/hasOwnProperty",
]
PARSE = "names => names.map(n => window.trainvitals.parseSeries(n))"


def python_answers(names: list[str]) -> list[dict[str, Any]]:
    return [dataclasses.asdict(parse_series(n)) for n in names]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    """A server with one small run (for its report); its URL and the run's id."""
    settings = Settings(port=0, data_dir=tmp_path_factory.mktemp("contract"),
                        ingest_token="i" * 16, log_alerts=False)
    store = SQLiteStore(settings.db_path)
    store.open()
    store.write([RunStart(run="tiny", session="t", time=1.0),
                 *(Step(run="tiny", session="t", seq=i + 1, step=i, time=1.0 + i,
                        loss=1.0 / (i + 1)) for i in range(3))])
    (run_id,) = (r.id for r in store.runs())
    store.close()
    with ServerThread(settings) as srv:
        yield srv.http_url, run_id


@pytest.fixture
def page(browser: Any) -> Iterator[tuple[Any, list[str]]]:
    context = browser.new_context()
    pg = context.new_page()
    pg.set_default_timeout(TIMEOUT_MS)
    problems: list[str] = []
    pg.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    pg.on("pageerror", lambda e: problems.append(str(e)))
    yield pg, problems
    context.close()


@pytest.mark.browser
def test_the_page_parses_series_names_exactly_as_python(
        server: tuple[str, int], page: tuple[Any, list[str]]) -> None:
    url, _ = server
    pg, problems = page
    asked: list[str] = []
    pg.on("request", lambda r: asked.append(r.url))
    pg.goto(url)
    pg.wait_for_function("() => window.trainvitals !== undefined")
    assert f"{url}/static/contract.json" in asked  # the grammar came from the contract
    assert pg.evaluate(PARSE, TRICKY) == python_answers(TRICKY)
    assert problems == []


@pytest.mark.browser
def test_the_report_parses_series_names_exactly_as_python(
        server: tuple[str, int], page: tuple[Any, list[str]], tmp_path: Path) -> None:
    url, run_id = server
    pg, problems = page
    report = tmp_path / "report.html"
    report.write_bytes(httpx.get(f"{url}/api/runs/{run_id}/report.html", timeout=60).content)
    pg.goto(report.as_uri())  # its contract is inlined: nothing to fetch
    pg.wait_for_selector("#run-view[data-state='ready']")
    assert pg.evaluate(PARSE, TRICKY) == python_answers(TRICKY)
    assert problems == []


@pytest.mark.browser
def test_a_page_served_another_contract_parses_by_it(
        server: tuple[str, int], page: tuple[Any, list[str]]) -> None:
    url, _ = server
    pg, problems = page
    changed = contract()
    changed["tensor_stats"] = [*changed["tensor_stats"], "p99"]
    changed["prefixes"] = {**changed["prefixes"], "component": "part/"}
    pg.route("**/static/contract.json",
             lambda route: route.fulfill(status=200, content_type="application/json",
                                         body=json.dumps(changed)))
    pg.goto(url)
    pg.wait_for_function("() => window.trainvitals !== undefined")
    assert pg.evaluate(PARSE, ["tensor/x/p99", "part/ce", "loss/ce"]) == [
        {"kind": "tensor", "name": "x", "stat": "p99"},
        {"kind": "component", "name": "ce", "stat": None},
        {"kind": "other", "name": "loss/ce", "stat": None}]
    assert problems == []
