"""The REST API, static files and health over a real server holding real ingested data."""

from __future__ import annotations

import gzip
import json
import math
from collections.abc import Callable, Iterator
from importlib import resources
from typing import Any

import httpx
import pytest
from websockets.sync.client import connect

from trainvitals.protocol import Batch, ClipEvent, Record, RunEnd, RunStart, Step, encode
from trainvitals.server import ServerThread, Settings

TOKEN = "ingest-token-for-rest-tests"
NAN = math.nan


def strict_json(response: httpx.Response) -> Any:
    """The body as JSON; fails on bare NaN/Infinity tokens, which browsers cannot parse."""
    def refuse(token: str) -> Any:
        raise AssertionError(f"bare {token} in {response.request.url}")

    assert response.headers["content-type"] == "application/json"
    return json.loads(response.text, parse_constant=refuse)


def ingest(srv: ServerThread, records: list[Record]) -> None:
    with connect(f"{srv.ws_url}/ws/ingest", additional_headers={"Authorization": f"Bearer {TOKEN}"},
                 open_timeout=10, proxy=None) as ws:
        ws.send(encode(Batch(tuple(records))))
        assert json.loads(ws.recv(timeout=10))["type"] == "ack"


def alpha(rank: int) -> list[Record]:
    """Run "alpha", one rank: loss NaN at step 3, clipped at steps 5 and 6, hot at 8 and 9."""
    session = f"a{rank}"
    records: list[Record] = [RunStart(run="alpha", session=session, rank=rank, world_size=2,
                                      time=1000.0, config={"lr": 0.1, "note": "NaN"})]
    for i in range(10):
        clip = None
        if i in (5, 6):
            clip = ClipEvent(raw=50.0 + i, threshold=10.0, action="zeroed",
                             reason="above_threshold", components={"pts": 40.0, "n": math.inf})
        records.append(Step(
            run="alpha", session=session, rank=rank, seq=i + 1, step=i, time=1001.0 + i,
            loss=NAN if i == 3 else 100.0 * rank + i, scalars={"temp": 150.0 if i >= 8 else 20.0},
            clip=clip))
    return records


BETA: list[Record] = [RunStart(run="beta", session="b", time=2000.0),
                      Step(run="beta", session="b", seq=1, step=0, time=2001.0, loss=1.0),
                      RunEnd(run="beta", session="b", seq=2, time=2002.0)]


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    settings = Settings(port=0, data_dir=tmp_path_factory.mktemp("rest"), ingest_token=TOKEN,
                        thresholds=["scalar/temp>100"], log_alerts=False)
    with ServerThread(settings) as server:
        ingest(server, alpha(0))
        ingest(server, alpha(1))
        ingest(server, BETA)
        yield server


@pytest.fixture(scope="module")
def api(srv: ServerThread) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=f"{srv.http_url}/api", timeout=10) as client:
        yield client


@pytest.fixture(scope="module")
def ids(api: httpx.Client) -> dict[str, int]:
    return {r["name"]: r["id"] for r in strict_json(api.get("/runs"))["runs"]}


# --------------------------------------------------------------------------- runs


def test_runs_lists_every_run_newest_first(api: httpx.Client, ids: dict[str, int]) -> None:
    runs = strict_json(api.get("/runs"))["runs"]
    assert [r["name"] for r in runs] == ["beta", "alpha"]
    beta, alpha_row = runs
    assert (beta["status"], beta["steps"], beta["last_step"], beta["ranks"]) == (
        "finished", 1, 0, [0])
    assert (alpha_row["status"], alpha_row["world_size"], alpha_row["ranks"]) == (
        "running", 2, [0, 1])
    assert (alpha_row["steps"], alpha_row["last_step"]) == (20, 9)
    assert (alpha_row["first_time"], alpha_row["last_time"]) == (1001.0, 1010.0)
    assert alpha_row["config"] == {"lr": 0.1, "note": "NaN"}
    assert alpha_row["open_alerts"] == {"warning": 4}  # clip and threshold alerts, per rank


def test_one_run_with_its_series(api: httpx.Client, ids: dict[str, int]) -> None:
    body = strict_json(api.get(f"/runs/{ids['beta']}"))
    assert body["run"]["name"] == "beta"
    assert body["series"] == [{"name": "loss", "rank": 0, "points": 1}]
    alpha_series = strict_json(api.get(f"/runs/{ids['alpha']}"))["series"]
    assert {(s["name"], s["rank"], s["points"]) for s in alpha_series} == {
        ("loss", 0, 10), ("loss", 1, 10), ("scalar/temp", 0, 10), ("scalar/temp", 1, 10)}


def test_series_with_rank_and_step_filters(api: httpx.Client, ids: dict[str, int]) -> None:
    url = f"/runs/{ids['alpha']}/series"
    both = strict_json(api.get(url, params={"name": "loss"}))
    assert both["run_id"] == ids["alpha"]
    assert [(s["name"], s["rank"]) for s in both["series"]] == [("loss", 0), ("loss", 1)]
    assert both["series"][0]["steps"] == list(range(10))
    assert both["series"][0]["values"][2:5] == [2.0, "NaN", 4.0]

    ranked = strict_json(api.get(url, params={"name": "loss", "rank": 1, "start": 2, "end": 4}))
    assert ranked["series"] == [{"name": "loss", "rank": 1, "steps": [2, 3, 4],
                                 "values": [102.0, "NaN", 104.0]}]
    limited = strict_json(api.get(url, params={"name": "loss", "rank": 0, "start": 7,
                                               "limit": 2}))
    assert limited["series"][0]["steps"] == [7, 8]
    several = strict_json(api.get(url, params={"name": ["scalar/temp", "loss", "nothing"],
                                               "rank": 0, "start": 8}))
    assert [(s["name"], s["values"]) for s in several["series"]] == [
        ("scalar/temp", [150.0, 150.0]), ("loss", [8.0, 9.0])]


def test_series_parameters_are_validated(api: httpx.Client, ids: dict[str, int]) -> None:
    url = f"/runs/{ids['alpha']}/series"
    assert api.get(url).status_code == 422  # name is required
    assert api.get(url, params={"name": "loss", "limit": 0}).status_code == 422
    assert api.get(url, params={"name": "loss", "rank": "one"}).status_code == 422


def test_clips(api: httpx.Client, ids: dict[str, int]) -> None:
    clips = strict_json(api.get(f"/runs/{ids['alpha']}/clips"))["clips"]
    assert [(c["rank"], c["step"], c["raw"]) for c in clips] == [
        (0, 5, 55.0), (1, 5, 55.0), (0, 6, 56.0), (1, 6, 56.0)]
    assert clips[0] == {"rank": 0, "step": 5, "raw": 55.0, "threshold": 10.0,
                        "action": "zeroed", "reason": "above_threshold",
                        "components": {"pts": 40.0, "n": "Infinity"}}
    ranged = strict_json(api.get(f"/runs/{ids['alpha']}/clips", params={"start": 6}))["clips"]
    assert [c["step"] for c in ranged] == [6, 6]
    assert strict_json(api.get(f"/runs/{ids['beta']}/clips"))["clips"] == []


def test_alerts_filtered_by_state_and_run(api: httpx.Client) -> None:
    every = strict_json(api.get("/alerts"))["alerts"]
    open_ = strict_json(api.get("/alerts", params={"state": "open"}))["alerts"]
    resolved = strict_json(api.get("/alerts", params={"state": "resolved"}))["alerts"]
    assert sorted(a["rule"] for a in open_) == ["clip", "clip", "threshold", "threshold"]
    assert all(a["state"] == "open" for a in open_)
    # The NaN loss at step 3 opened a nonfinite alert per rank; clean steps resolved them.
    assert [(a["rule"], a["series"], a["first_step"]) for a in resolved] == [
        ("nonfinite", "loss", 3)] * 2
    assert all(a["state"] == "resolved" and a["details"]["value"] == "NaN" for a in resolved)
    assert len(every) == len(open_) + len(resolved)
    threshold = next(a for a in open_ if a["rule"] == "threshold")
    assert (threshold["series"], threshold["opened_step"]) == ("scalar/temp", 8)
    assert strict_json(api.get("/alerts", params={"run": "beta"}))["alerts"] == []
    assert len(strict_json(api.get("/alerts", params={"run": "alpha"}))["alerts"]) == len(every)
    assert api.get("/alerts", params={"state": "bogus"}).status_code == 422


@pytest.mark.parametrize("path", ["/runs/9999", "/runs/9999/series?name=loss",
                                  "/runs/9999/clips"])
def test_unknown_run_is_404(api: httpx.Client, path: str) -> None:
    response = api.get(path)
    assert response.status_code == 404
    assert strict_json(response) == {"detail": "no run with id 9999"}


# --------------------------------------------------------------------------- pages, headers


def _index_exists() -> bool:
    return resources.files("trainvitals.frontend").joinpath("index.html").is_file()


@pytest.mark.parametrize("path", ["/", "/api/runs", "/api/runs/9999", "/healthz",
                                  "/static/vendor/plotly.min.js"])
def test_security_headers_on_every_response(srv: ServerThread, path: str) -> None:
    response = httpx.get(f"{srv.http_url}{path}", timeout=30)
    if path == "/":
        assert response.status_code == (200 if _index_exists() else 404)
    csp = {d.split()[0]: d.split()[1:] for d in
           response.headers["content-security-policy"].split("; ")}
    assert csp["script-src"] == ["'self'"]
    assert "'unsafe-inline'" not in csp["default-src"]
    assert csp["object-src"] == ["'none'"] and csp["frame-ancestors"] == ["'none'"]
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["x-frame-options"] == "DENY"
    assert response.headers["referrer-policy"] == "no-referrer"


def test_plotly_is_served_gzipped_when_asked(srv: ServerThread) -> None:
    raw = resources.files("plotly").joinpath("package_data", "plotly.min.js").read_bytes()
    url = f"{srv.http_url}/static/vendor/plotly.min.js"
    with httpx.Client(timeout=30) as client:
        packed = client.get(url, headers={"Accept-Encoding": "gzip"})
        plain = client.get(url, headers={"Accept-Encoding": "identity"})
        with client.stream("GET", url, headers={"Accept-Encoding": "gzip"}) as stream:
            wire = b"".join(stream.iter_raw())
    assert packed.status_code == plain.status_code == 200
    assert packed.headers["content-encoding"] == "gzip"
    assert packed.headers["content-type"].startswith("text/javascript")
    assert packed.headers["vary"] == "Accept-Encoding"
    assert int(packed.headers["content-length"]) < len(raw) // 2
    assert packed.content == raw  # httpx decoded the gzip body
    assert wire[:2] == b"\x1f\x8b" and gzip.decompress(wire) == raw
    assert "content-encoding" not in plain.headers
    assert plain.content == raw


@pytest.mark.parametrize("path", ["/static/__init__.py", "/static/..%2Fserver%2Fapp.py",
                                  "/static/nothing.js"])
def test_static_serves_only_frontend_assets(srv: ServerThread, path: str) -> None:
    assert httpx.get(f"{srv.http_url}{path}").status_code == 404


def test_healthz(srv: ServerThread) -> None:
    body = strict_json(httpx.get(f"{srv.http_url}/healthz"))
    records = len(alpha(0)) + len(alpha(1)) + len(BETA)
    assert body == {"status": "ok", "committed": records, "viewers": 0, "ready": True}


# --------------------------------------------------------------------------- view token


def test_view_token_is_required_when_set(start_server: Callable[..., ServerThread]) -> None:
    srv = start_server(view_token="view-token-5678")
    url = f"{srv.http_url}/api/runs"
    missing = httpx.get(url)
    assert missing.status_code == 401
    assert strict_json(missing) == {"detail": "missing or wrong view token"}
    assert missing.headers["x-content-type-options"] == "nosniff"
    assert httpx.get(url, headers={"Authorization": "Bearer wrong-token"}).status_code == 401
    assert httpx.get(url, params={"token": "wrong-token"}).status_code == 401
    assert httpx.get(f"{srv.http_url}/api/alerts").status_code == 401

    by_header = httpx.get(url, headers={"Authorization": "Bearer view-token-5678"})
    by_query = httpx.get(url, params={"token": "view-token-5678"})
    assert by_header.status_code == by_query.status_code == 200
    assert strict_json(by_header) == strict_json(by_query) == {"runs": []}
    # The ingest token is not a view token.
    assert httpx.get(url, params={"token": srv.settings.ingest_token}).status_code == 401
