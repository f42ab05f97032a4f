"""``trainvitals train-demo``, the example trainer's command, on the host against a real server
(fast: no containers, so not in the ``deploy`` group)."""

from __future__ import annotations

import io
from pathlib import Path

import httpx
import pytest

from trainvitals.cli import main
from trainvitals.demo.client import health_url, wait_healthy
from trainvitals.server import ServerThread, Settings

TOKEN = "ingest-token-for-the-client"


@pytest.mark.parametrize(("server", "url"), [
    ("ws://server:8765", "http://server:8765/healthz"),
    ("ws://server:8765/ws/ingest", "http://server:8765/healthz"),
    ("wss://tv.example.org/", "https://tv.example.org/healthz"),
    ("127.0.0.1:9000", "http://127.0.0.1:9000/healthz"),
    ("http://h:1", "http://h:1/healthz"),
])
def test_health_url(server: str, url: str) -> None:
    assert health_url(server) == url


@pytest.mark.slow  # the demo builds its scenes first
def test_train_demo_streams_runs_to_a_remote_server(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    settings = Settings(port=0, data_dir=tmp_path, ingest_token=TOKEN, log_alerts=False)
    with ServerThread(settings) as srv:
        status = main(["train-demo", "--server", srv.ws_url, "--token", TOKEN,
                       "--variants", "softplus", "--steps", "3", "--prefix", "client"])
        runs = httpx.get(f"{srv.http_url}/api/runs").json()["runs"]
    assert status == 0
    assert "client-softplus: finished after 3 steps; all records stored" in capsys.readouterr().out
    (run,) = runs
    assert (run["name"], run["status"], run["steps"]) == ("client-softplus", "finished", 3)
    assert run["config"]["depth_activation"] == "softplus"


@pytest.mark.slow
def test_train_demo_with_a_wrong_token_reports_an_incomplete_run(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    settings = Settings(port=0, data_dir=tmp_path, ingest_token=TOKEN, log_alerts=False)
    with ServerThread(settings) as srv:
        status = main(["train-demo", "--server", srv.ws_url, "--token", "not-the-token",
                       "--variants", "softplus", "--steps", "1", "--prefix", "refused",
                       "--close-timeout", "1"])
        runs = httpx.get(f"{srv.http_url}/api/runs").json()["runs"]
    assert status == 1
    assert "INCOMPLETE" in capsys.readouterr().out
    assert runs == []


def test_waiting_for_a_server_that_never_comes_gives_up_clearly() -> None:
    out = io.StringIO()
    with pytest.raises(SystemExit, match=r"server not healthy at http://127.0.0.1:9/healthz"):
        wait_healthy("ws://127.0.0.1:9", timeout=0.5, out=out)
    assert out.getvalue().startswith("waiting for http://127.0.0.1:9/healthz")
