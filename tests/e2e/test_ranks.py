"""Every rank reports: two real ``torch.distributed`` (gloo) processes, one of them fed a NaN.

The workers are this file run as a script: a DDP model, a vanilla loop and one
``trainvitals.attach`` call each. Rank 1 gets a NaN in its input at step 5; the all-reduce
carries it into rank 0's gradients in the same step, so rank 0 goes bad at step 5 too — only
later in the step. The server must keep both ranks' series apart and name rank 1.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.browser import launch, require_chromium
from tests.support.ports import free_port
from trainvitals.server import ServerThread, Settings
from trainvitals.server.alerts import Alert
from trainvitals.server.views.ranks import bad_ranks, first_bad

TOKEN = "ranks-ingest-token"
RUN = "ddp-nan"
STEPS, BAD_RANK, BAD_STEP = 8, 1, 5


def _alert(rank: int, step: int, series: str, severity: str = "critical") -> Alert:
    return Alert(run="r", rank=rank, rule="nonfinite", series=series, severity=severity,  # type: ignore[arg-type]
                 state="open", first_step=step, opened_step=step, last_step=step,
                 resolved_step=None, count=1, message=f"{series} bad")


def test_the_earliest_step_wins_then_the_earliest_stage_then_the_lower_rank() -> None:
    assert first_bad([]) is None
    assert first_bad([_alert(0, 3, "loss", severity="warning")]) is None
    spread = [_alert(0, 5, "grad_norm_post"), _alert(1, 5, "loss"), _alert(2, 4, "lr")]
    assert [(b.rank, b.step) for b in bad_ranks(spread)] == [(2, 4), (1, 5), (0, 5)]
    same_step = [_alert(0, 5, "grad_norm_post"), _alert(1, 5, "tensor/x/max"),
                 _alert(1, 6, "origin")]
    found = first_bad(same_step)
    assert found is not None and (found.rank, found.series) == (1, "tensor/x/max")
    assert [b.rank for b in bad_ranks([_alert(1, 5, "loss"), _alert(0, 5, "loss/points")])] \
        == [0, 1]



@pytest.mark.slow  # two processes that each import torch and join a process group
def test_two_gloo_ranks_report_apart_and_the_faulty_one_is_named(tmp_path: Path) -> None:
    server = ServerThread(Settings(port=0, data_dir=tmp_path / "data", ingest_token=TOKEN,
                                   log_alerts=False)).start()
    try:
        port = free_port()
        logs = [tmp_path / f"rank{r}.log" for r in range(2)]
        env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE")}
        root = str(Path(__file__).resolve().parents[2])  # the worker imports tests.support too
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
        procs = [subprocess.Popen(
            [sys.executable, __file__, str(rank), str(port), server.ws_url, str(tmp_path)],
            stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env)
            for rank, log in enumerate(logs)]
        codes = [p.wait(timeout=300) for p in procs]
        assert codes == [0, 0], "\n".join(log.read_text() for log in logs)
        api = f"{server.http_url}/api"
        (run,) = [r for r in httpx.get(f"{api}/runs").json()["runs"] if r["name"] == RUN]
        detail = httpx.get(f"{api}/runs/{run['id']}").json()
        loss = httpx.get(f"{api}/runs/{run['id']}/series", params={"name": "loss"}).json()
    finally:
        server.stop()

    assert (run["world_size"], run["ranks"], run["status"]) == (2, [0, 1], "finished")
    by_rank: dict[int, dict[str, Any]] = {s["rank"]: s for s in loss["series"]}
    assert sorted(by_rank) == [0, 1]
    for rank, series in by_rank.items():
        assert series["steps"] == list(range(STEPS))
        values = series["values"]
        assert all(isinstance(v, float) for v in values[:BAD_STEP]), (rank, values)
        assert values[BAD_STEP + 1:] == ["NaN"] * (STEPS - BAD_STEP - 1)  # NaN weights now
    assert by_rank[BAD_RANK]["values"][BAD_STEP] == "NaN"
    assert isinstance(by_rank[0]["values"][BAD_STEP], float)  # rank 0's own forward was fine
    first = detail["first_bad"]
    assert (first["rank"], first["step"], first["rule"]) == (BAD_RANK, BAD_STEP, "nonfinite")
    assert [(b["rank"], b["step"]) for b in detail["bad_ranks"]] == [(1, BAD_STEP), (0, BAD_STEP)]
    assert detail["bad_ranks"][1]["series"] not in ("loss", "origin")  # later in the step




@pytest.mark.browser
def test_the_dashboard_draws_each_rank_and_names_the_first_bad_one(tmp_path: Path) -> None:
    """Two ranks' records (sent in-process, as ``Monitor(rank=...)``), opened in Chromium."""
    import torch

    from trainvitals import Monitor

    require_chromium()
    import playwright.sync_api as sync_api
    server = ServerThread(Settings(port=0, data_dir=tmp_path / "data", ingest_token=TOKEN,
                                   log_alerts=False)).start()
    try:
        for rank in (0, 1):
            with Monitor("two-ranks", server=server.ws_url, token=TOKEN, rank=rank,
                         world_size=2, spool=None) as mon:
                for step in range(STEPS):
                    nan = (rank == 1 and step >= BAD_STEP) or (rank == 0 and step > BAD_STEP)
                    loss = torch.tensor(float("nan") if nan else 1.0 / (step + 1))
                    post = torch.tensor(float("nan") if step >= BAD_STEP else 0.5)
                    mon.log_step(step, loss=loss, grad_norm_post=post)
        (run,) = httpx.get(f"{server.http_url}/api/runs").json()["runs"]
        with sync_api.sync_playwright() as pw:
            browser = launch(pw)
            page = browser.new_page()
            page.set_default_timeout(45_000)
            page.goto(f"{server.http_url}/#run={run['id']}")
            page.wait_for_selector(f"#run-view[data-state='ready'][data-run-id='{run['id']}']")
            note = page.locator("#run-view .run-meta .first-bad").inner_text()
            traces = page.evaluate("""() => window.trainvitals.settled().then(() =>
                window.trainvitals.traceLengths('chart-loss'))""")
            browser.close()
    finally:
        server.stop()
    assert note == f" · rank 1 went bad first, at step {BAD_STEP} (nonfinite: loss)"
    assert traces["s:loss#0"] == traces["s:loss#1"] == STEPS  # each rank its own trace


def _worker(rank: int, port: int, server_url: str, scratch: Path) -> None:
    """One rank: rank and world size come from the process group (no RANK in the env)."""
    import torch
    import torch.distributed as dist
    from torch import nn
    from torch.nn.parallel import DistributedDataParallel

    import trainvitals

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=2)
    torch.manual_seed(0)
    model = DistributedDataParallel(nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1)))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    criterion = nn.MSELoss()
    handle = trainvitals.attach(model, optimizer, run=RUN, loss_module=criterion,
                                server=server_url, token=TOKEN, spool=scratch / f"spool{rank}")
    data = torch.Generator().manual_seed(rank)
    for step in range(STEPS):
        x, y = torch.randn(8, 4, generator=data), torch.randn(8, 1, generator=data)
        if rank == BAD_RANK and step == BAD_STEP:
            x[0, 0] = float("nan")  # a corrupt sample on one rank
        loss = criterion(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    handle.close()
    dist.destroy_process_group()


if __name__ == "__main__":
    _worker(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], Path(sys.argv[4]))
