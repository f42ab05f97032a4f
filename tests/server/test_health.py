"""The health summary (pure, from facts), the silent status, and both over a real server fed by
a real Monitor and by protocol records with old trainer times."""

from __future__ import annotations

import json
import math
import time
from typing import Any

import httpx
import pytest
import torch
from websockets.sync.client import connect

from trainvitals import Monitor
from trainvitals.protocol import Batch, Record, RunStart, Step, encode
from trainvitals.server import ServerThread
from trainvitals.server.alerts import Alert
from trainvitals.server.store import ClipRow, RunRow
from trainvitals.server.views.health import HealthFacts, duration, live_status, num, summarize

INGEST_TOKEN = "ingest-token-for-tests"  # tests/server/conftest.py


def alert(rule: str, series: str, severity: str = "critical", *, first: int = 0,
          message: str = "", **details: Any) -> Alert:
    return Alert(run="r", rank=0, rule=rule, series=series,
                 severity=severity,  # type: ignore[arg-type]
                 state="open", first_step=first, opened_step=first, last_step=first,
                 resolved_step=None, count=1, message=message, details=details)


def clip(step: int, raw: float = 3.2e4, threshold: float = 10.0,
         reason: str = "above_threshold") -> ClipRow:
    return ClipRow(0, step, raw, threshold, "zeroed", reason, {})


def row(status: str = "running", updated: float = 1000.0) -> RunRow:
    return RunRow(1, "r", status, 0.0, updated, 10, 1, [0], 0, "", {})


# --------------------------------------------------------------------------- pure


def test_the_silent_stall_reads_as_in_the_issue() -> None:
    facts = HealthFacts(
        status="running", steps=1516, last_step=1515, grad_last=0.0,
        open_alerts=[alert("stall", "loss_used", first=1204, streak=312, since=1204),
                     alert("clip", "loss", "warning", count=100, window=100)],
        stall_clip=clip(1204), first_clip=clip(1204))
    health = summarize(facts)
    assert health.level == "critical"
    assert health.summary == ("Loss clipped to 0 on the last 312 steps; gradients are 0; the "
                              "model is not learning. First clip at step 1,204: raw loss 3.2e4 "
                              "> clip 10.")


def test_a_healthy_run_says_how_its_loss_went() -> None:
    health = summarize(HealthFacts(status="running", steps=300, last_step=299,
                                   loss_first=2.31, loss_last=0.0412))
    assert (health.level, health.summary) == (
        "ok", "Healthy: loss 2.31 → 0.0412 over 300 steps; no open alerts.")
    finished = summarize(HealthFacts(status="finished", steps=3, loss_first=1.0, loss_last=1.0))
    assert finished.summary == "Finished: loss 1 → 1 over 3 steps; no open alerts."
    assert summarize(HealthFacts(status="running")).summary == "No steps yet."


def test_crash_non_finite_values_and_clipping_are_each_said() -> None:
    facts = HealthFacts(
        status="crashed", reason="non-finite loss at step 151: raw=inf used=nan", steps=152,
        last_step=151, first_clip=clip(150, raw=math.inf, reason="posinf"),
        open_alerts=[alert("nonfinite", "loss_used", first=151),
                     alert("nonfinite", "loss", first=151),
                     alert("nonfinite", "tensor/depth", first=150),
                     alert("nonfinite", "loss/normal", first=152),
                     alert("clip", "loss", "warning", count=3, window=100),
                     alert("spike", "loss", "warning", message="Loss spike at step 149.")])
    health = summarize(facts)
    assert health.level == "critical"
    assert health.sentences == [
        "The run crashed at step 151: non-finite loss at step 151: raw=inf used=nan.",
        "NaN/Inf in tensor/depth, loss, loss_used and 1 more since step 150.",
        "The loss guard fired on 3 of the last 100 steps; first at step 150: raw loss +Inf "
        "(posinf), action zeroed.",
        "Loss spike at step 149.",
    ]


def test_a_zero_gradient_without_a_zero_loss() -> None:
    health = summarize(HealthFacts(status="running", steps=50, loss_last=4.5, open_alerts=[
        alert("stall", "grad_norm", streak=12, since=38)]))
    assert health.summary == ("The gradient norm was 0 on the last 12 steps while the loss is "
                              "4.5; the model is not learning.")


def test_silence() -> None:
    assert live_status(row(updated=1000.0), now=1059.0, silent_after_s=60) == "running"
    assert live_status(row(updated=1000.0), now=1061.0, silent_after_s=60) == "silent"
    assert live_status(row("finished"), now=1e9, silent_after_s=60) == "finished"
    health = summarize(HealthFacts(status="silent", steps=10, silent_for=900.0))
    assert (health.level, health.summary) == (
        "warning", "No data for 15 min: the trainer may be stuck, or gone without saying so.")


@pytest.mark.parametrize(("x", "text"), [(3.2e4, "3.2e4"), (1.5e-5, "1.5e-5"), (10.0, "10"),
                                         (0.0412, "0.0412"), (math.nan, "NaN"), (-math.inf, "-Inf"),
                                         (None, "—")])
def test_numbers(x: float | None, text: str) -> None:
    assert num(x) == text


def test_durations() -> None:
    assert [duration(s) for s in (5, 119, 120, 7199, 7260, 200_000)] == [
        "5 s", "119 s", "2 min", "119 min", "2 h 1 min", "2 days"]


# --------------------------------------------------------------------------- over a server


def test_health_endpoint_on_a_real_stalled_run(start_server: Any) -> None:
    srv: ServerThread = start_server(stall_steps=5)
    with Monitor("stalled", server=srv.ws_url, token=INGEST_TOKEN, spool=None) as mon:
        for step in range(30):
            raw = torch.tensor(1.0 + (500.0 if step >= 12 else 0.0))
            used = mon.clip_guard(raw, 10.0, {"pts": raw})
            grad = torch.tensor(0.0 if bool(used == 0) else 0.8)
            mon.log_step(step, grad_norm=grad)
        assert mon.flush(10), mon.stats()
        run = httpx.get(f"{srv.http_url}/api/runs", timeout=60).json()["runs"][0]
        body = httpx.get(f"{srv.http_url}/api/runs/{run['id']}/health", timeout=60).json()
    assert body["level"] == "critical"
    assert body["sentences"][0] == ("Loss clipped to 0 on the last 18 steps; gradients are 0; "
                                    "the model is not learning. First clip at step 12: raw loss "
                                    "501 > clip 10.")
    assert httpx.get(f"{srv.http_url}/api/runs/999/health", timeout=60).status_code == 404


def test_runs_are_silent_after_silent_after_s_without_data(start_server: Any) -> None:
    srv: ServerThread = start_server(silent_after_s=60)
    now = time.time()
    records: list[Record] = [RunStart(run="old", session="o", time=now - 600),
               Step(run="old", session="o", seq=1, step=0, time=now - 600, loss=1.0),
               RunStart(run="fresh", session="f", time=now),
               Step(run="fresh", session="f", seq=1, step=0, time=now, loss=1.0)]
    with connect(f"{srv.ws_url}/ws/ingest", additional_headers={
            "Authorization": f"Bearer {INGEST_TOKEN}"}, open_timeout=10, proxy=None) as ws:
        ws.send(encode(Batch(tuple(records))))
        assert json.loads(ws.recv(timeout=10))["type"] == "ack"
    runs = {r["name"]: r for r in httpx.get(f"{srv.http_url}/api/runs", timeout=60).json()["runs"]}
    assert (runs["old"]["status"], runs["old"]["silent"]) == ("running", True)
    assert (runs["fresh"]["status"], runs["fresh"]["silent"]) == ("running", False)
    one = httpx.get(f"{srv.http_url}/api/runs/{runs['old']['id']}", timeout=60).json()["run"]
    assert one["silent"] is True
    health = httpx.get(f"{srv.http_url}/api/runs/{runs['old']['id']}/health", timeout=60).json()
    assert health["level"] == "warning"
    assert health["summary"].startswith("No data for 10 min")
