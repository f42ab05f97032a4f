"""Exports over a real server: the CSV (every value exact, NaN/±Inf as themselves, chunked) and
the self-contained HTML report (plotly.js embedded, names escaped, spikes and NaN kept)."""

from __future__ import annotations

import csv
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

TOKEN = "ingest-token-for-report-tests"
NAN, INF = math.nan, math.inf
XSS = "<img src=x onerror=alert(1)>"


def records(run: str) -> list[Record]:
    """Two ranks; rank 1 reports every other step; NaN, ±Inf, a clip and a tensor."""
    out: list[Record] = []
    for rank in (0, 1):
        s = f"s{rank}"
        out.append(RunStart(run=run, session=s, rank=rank, world_size=2, time=1000.0,
                            config={"lr": 0.1, XSS: "<b>cfg</b>"}))
        for i in range(0, 12, 1 + rank):
            loss = {3: NAN, 4: INF, 5: -INF}.get(i, 1.0 / (i + 1) + rank)
            clip = (ClipEvent(raw=50.0, threshold=10.0, action="zeroed", reason="above_threshold")
                    if i == 8 else None)
            stats = TensorStats(count=4, nan=1 if i == 6 else 0, posinf=0, neginf=0, min=-1.0 - i,
                                max=1.0 + i, mean=0.1 * i, absmax=1.0 + i)
            out.append(Step(run=run, session=s, rank=rank, seq=i + 1, step=i, time=1001.0 + i,
                            loss=loss, loss_used=0.0 if clip else loss, grad_norm=0.5,
                            components={XSS: 0.25}, tensors={"depth": stats}, clip=clip))
        out.append(RunEnd(run=run, session=s, rank=rank, seq=100, time=2000.0))
    return out


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    settings = Settings(port=0, data_dir=tmp_path_factory.mktemp("report"), ingest_token=TOKEN,
                        log_alerts=False)
    with ServerThread(settings) as server:
        with connect(f"{server.ws_url}/ws/ingest", additional_headers={
                "Authorization": f"Bearer {TOKEN}"}, open_timeout=10, proxy=None) as ws:
            ws.send(encode(Batch(tuple(records(XSS)))))
            assert json.loads(ws.recv(timeout=10))["type"] == "ack"
        yield server


@pytest.fixture(scope="module")
def run_id(srv: ServerThread) -> int:
    return int(httpx.get(f"{srv.http_url}/api/runs", timeout=60).json()["runs"][0]["id"])


def test_csv_has_every_value_exactly_with_non_finite_values_as_themselves(
        srv: ServerThread, run_id: int) -> None:
    response = httpx.get(f"{srv.http_url}/api/runs/{run_id}/export.csv", timeout=60)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    assert response.headers["content-disposition"] == (
        'attachment; filename="img_src_x_onerror_alert_1.csv"')  # only safe characters
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


def test_html_report_is_self_contained_escaped_and_complete(srv: ServerThread, run_id: int) -> None:
    response = httpx.get(f"{srv.http_url}/api/runs/{run_id}/report.html", timeout=60)
    assert response.status_code == 200
    assert response.headers["content-disposition"].startswith("attachment;")
    page = response.text
    # plotly.js is inside, and nothing is loaded from elsewhere.
    assert len(page) > 3_000_000 and "Plotly.newPlot" in page
    assert re.search(r"<script[^>]+src=", page) is None
    markup = re.sub(r"<script\b.*?</script>", "", page, flags=re.S)  # plotly.js is code only
    assert "http" not in markup and "<link" not in markup
    # Every user-named string is text: the raw tag never appears outside escaped forms.
    assert XSS not in page and "<b>cfg</b>" not in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in page  # title, heading, config
    assert 'id="health"' in page and "NaN/Inf in" in page
    figures = _figures(page)
    assert [f["layout"]["title"]["text"] for f in figures] == [
        "Loss: raw vs. backpropagated", "Gradient norm (log scale)",
        "Tensor depth: min/max band, mean"]
    loss = {t["name"]: t for t in figures[0]["data"]}
    assert loss["loss [rank 0]"]["y"][:3] == [1.0, 0.5, pytest.approx(1 / 3)]
    assert loss["loss [rank 0]"]["y"][3:6] == [None, None, None]  # gaps, drawn as markers:
    assert loss["NaN"]["x"] == [3] and loss["+Inf"]["x"] == [4] and loss["-Inf"]["x"] == [5]
    assert "&lt;img src=x onerror=alert(1)&gt; [rank 0]" in [
        n.removeprefix("loss/") for n in loss]
    tensor = [t["name"] for t in figures[2]["data"]]
    assert tensor[:3] == ["depth min [rank 0]", "depth max [rank 0]", "depth mean [rank 0]"]
    assert figures[2]["data"][1]["fill"] == "tonexty"  # the band: max down to min


def _figures(page: str) -> list[dict[str, Any]]:
    """The figures passed to Plotly.newPlot (data and layout)."""
    out = []
    decoder = json.JSONDecoder()
    for match in re.finditer(r'Plotly\.newPlot\(\s*"[^"]+",\s*', page):
        data, end = decoder.raw_decode(page, match.end())
        rest = page[end:].lstrip().removeprefix(",").lstrip()
        layout, _ = decoder.raw_decode(rest)
        out.append({"data": data, "layout": layout})
    return out


def test_exports_of_an_unknown_run_are_404(srv: ServerThread) -> None:
    for path in ("report.html", "export.csv"):
        assert httpx.get(f"{srv.http_url}/api/runs/999/{path}", timeout=60).status_code == 404
