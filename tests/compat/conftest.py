"""Fixtures for the real-setup tests (torch.compile, AMP, accumulation, sharded ranks): a real
server on a free port, monitors that report to it, and what the server then says of a run."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from trainvitals import Monitor
from trainvitals.protocol.floats import float_from_wire
from trainvitals.server import ServerThread, Settings

TOKEN = "compat-token-for-tests"


@dataclass
class Told:
    """What the server says about one run (rank 0 unless asked)."""

    run: dict[str, Any]
    series: dict[str, dict[int, float]]
    incidents: list[dict[str, Any]]

    def steps(self, name: str = "loss") -> list[int]:
        return sorted(self.series.get(name, {}))


@pytest.fixture
def token() -> str:
    return TOKEN


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerThread]:
    srv = ServerThread(Settings(port=0, data_dir=tmp_path / "data", ingest_token=TOKEN,
                                log_alerts=False)).start()
    yield srv
    srv.stop()


@pytest.fixture
def monitors(tmp_path: Path, server: ServerThread) -> Iterator[Callable[..., Monitor]]:
    """Monitors reporting to ``server``; whatever a test leaves open is closed after it."""
    made: list[Monitor] = []

    def make(run: str, **kw: Any) -> Monitor:
        kw.setdefault("token", TOKEN)
        kw.setdefault("spool", tmp_path / "spool")
        mon = Monitor(run, server=server.ws_url, **kw)
        made.append(mon)
        return mon

    yield make
    for mon in made:
        mon.close(timeout=0.5)


def get(srv: ServerThread, path: str, **params: Any) -> Any:
    response = httpx.get(f"{srv.http_url}/api{path}", params=params, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


@pytest.fixture
def told(server: ServerThread) -> Callable[..., Told]:
    """Reads a run back through the REST API: the named series and the incidents."""
    def read(name: str, *names: str, rank: int = 0) -> Told:
        (run,) = [r for r in get(server, "/runs")["runs"] if r["name"] == name]
        wanted = names or ("loss",)
        found = get(server, f"/runs/{run['id']}/series", name=list(wanted), rank=rank)["series"]
        series = {s["name"]: dict(zip(s["steps"], map(float_from_wire, s["values"]), strict=True))
                  for s in found}  # NaN/Inf come as the wire's strings
        incidents = get(server, f"/runs/{run['id']}/incidents")["incidents"]
        return Told(run, series, incidents)

    return read
