"""Runs that never reached a server, uploaded later by the real ``trainvitals sync`` command;
and a process that exits without ``close()``: bounded flush, and a message saying what to do."""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from trainvitals import Monitor
from trainvitals.protocol import Record, RunEnd, RunStart, Step, encode
from trainvitals.server import ServerThread
from trainvitals.trainer_plugin.delivery.spool import spool_files, stream_stem

Rest = Callable[..., Any]
MakeMonitor = Callable[..., Monitor]


def sync(spool: Path, srv: ServerThread, token: str,
         *extra: str) -> subprocess.CompletedProcess[str]:
    """The real command, in its own process (it must not need torch: that is checked too)."""
    server = srv.ws_url
    return subprocess.run([sys.executable, "-m", "trainvitals.cli", "sync", str(spool),
                           "--server", server, "--token", token, *extra],
                          capture_output=True, text=True, timeout=300)


def train(mon: Monitor, steps: range) -> None:
    for i in steps:
        mon.tensor("w", torch.full((2,), float(i)))
        mon.log_step(i, loss=float(i), grad_norm=torch.tensor(0.5))


def rows(rest: Rest, srv: ServerThread) -> dict[str, dict[str, Any]]:
    return {r["name"]: r for r in rest(srv, "/runs")["runs"]}


def losses(rest: Rest, srv: ServerThread, run_id: int) -> dict[int, list[int]]:
    body = rest(srv, f"/runs/{run_id}/series", name="loss")
    return {s["rank"]: s["steps"] for s in body["series"]}


@pytest.mark.slow
def test_server_absent_for_the_whole_run_then_sync_uploads_it_completely(
        dead_url: str, monitors: MakeMonitor, start_server: Callable[..., ServerThread],
        rest: Rest, token: str, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    ranks = [monitors("absent", dead_url, rank=r, world_size=2, close_timeout=0.3)
             for r in (0, 1)]
    for mon in ranks:
        train(mon, range(100))
    for mon in ranks:
        stats = mon.close()
        assert (stats.sent, stats.pending, stats.dropped) == (0, 102, 0)
    assert len([s for s in spool_files(spool) if s.startswith("absent.r")]) == 2

    srv = start_server()
    refused = sync(spool, srv, "not-the-token", "--timeout", "2")
    assert refused.returncode == 1
    assert "HTTP 401" in refused.stderr and "run sync again" in refused.stderr
    assert len(spool_files(spool)) == 2 and rest(srv, "/runs")["runs"] == []

    done = sync(spool, srv, token)
    assert done.returncode == 0, done.stderr
    assert "204 record(s) of 2 stream(s) uploaded" in done.stdout
    assert "absent (rank 0) [##############################] 100% 102/102 records" in done.stderr
    assert "absent (rank 1) [##############################] 100% 102/102 records" in done.stderr
    run = rows(rest, srv)["absent"]
    assert (run["status"], run["steps"], run["ranks"], run["dropped"]) == (
        "finished", 200, [0, 1], 0)
    assert losses(rest, srv, run["id"]) == {0: list(range(100)), 1: list(range(100))}
    assert list(spool.iterdir()) == []  # uploaded: nothing left, not even a lock file

    again = sync(spool, srv, token)
    assert again.returncode == 0
    assert "no spool files" in again.stderr and "0 record(s) of 0 stream(s)" in again.stdout


@pytest.mark.slow
def test_offline_run_is_uploaded_and_a_live_spool_is_left_alone(
        monitors: MakeMonitor, start_server: Callable[..., ServerThread], rest: Rest,
        token: str, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    mon = monitors("offline-run", None)
    train(mon, range(10))
    assert mon.flush(5)
    srv = start_server()

    busy = sync(spool, srv, token)  # the process is still writing that spool
    assert busy.returncode == 1
    assert "a running process is still writing it; skipped" in busy.stderr
    assert rest(srv, "/runs")["runs"] == []

    assert mon.close().pending == 12
    done = sync(spool, srv, token)
    assert done.returncode == 0, done.stderr
    run = rows(rest, srv)["offline-run"]
    assert (run["status"], run["steps"]) == ("finished", 10)
    assert losses(rest, srv, run["id"]) == {0: list(range(10))}


EXITING_SCRIPT = """
import sys, torch
from trainvitals import Monitor
mon = Monitor("exited", server=sys.argv[1], token="t" * 16, spool=sys.argv[2],
              close_timeout=1.0)
for i in range(25):
    mon.log_step(i, loss=torch.tensor(float(i)))
print("training done", flush=True)
# no mon.close(): the atexit hook must end the run, flush within 1 s and say what is left
"""


@pytest.mark.slow
def test_exit_without_close_flushes_in_bounded_time_and_says_how_to_send(
        dead_url: str, start_server: Callable[..., ServerThread], rest: Rest, token: str,
        tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent(EXITING_SCRIPT))
    out = subprocess.run([sys.executable, str(script), dead_url, str(spool)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "training done\n"
    assert (f"27 record(s) of run 'exited' not acknowledged by {dead_url} within 1 s "
            "(cannot connect to") in out.stderr
    assert f"are kept in {spool}; send them with: trainvitals sync {spool} --server " \
        f"{dead_url}" in out.stderr

    srv = start_server()
    done = sync(spool, srv, token)
    assert done.returncode == 0, done.stderr
    run = rows(rest, srv)["exited"]
    assert (run["status"], run["reason"], run["steps"]) == (
        "crashed", "process exited without Monitor.close()", 25)


def test_sync_does_not_need_torch(tmp_path: Path) -> None:
    """It may run where torch is not installed (a login node): it never imports it."""
    probe = ("import sys\nfrom trainvitals.cli import main\n"
             f"code = main(['sync', {str(tmp_path)!r}, '--server', 'ws://127.0.0.1:9'])\n"
             "print(code, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         timeout=120)
    assert out.stdout.splitlines()[-1] == "0 False", out.stderr
    assert "no spool files" in out.stderr


def test_a_token_that_starts_with_a_dash_is_passed_as_token_equals_value(
        dead_url: str, monitors: MakeMonitor, start_server: Callable[..., ServerThread],
        rest: Rest, tmp_path: Path) -> None:
    dashed = "-dash-first-token-Ab3"
    mon = monitors("dashed", dead_url, close_timeout=0.3)
    train(mon, range(3))
    mon.close()
    srv = start_server(ingest_token=dashed)
    spaced = subprocess.run([sys.executable, "-m", "trainvitals.cli", "sync",
                             str(tmp_path / "spool"), "--server", srv.ws_url, "--token", dashed],
                            capture_output=True, text=True, timeout=300)
    assert spaced.returncode == 2 and "expected one argument" in spaced.stderr  # argparse's
    done = subprocess.run([sys.executable, "-m", "trainvitals.cli", "sync",
                           str(tmp_path / "spool"), f"--server={srv.ws_url}",
                           f"--token={dashed}"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert rows(rest, srv)["dashed"]["steps"] == 3


def test_new_tokens_never_start_with_a_dash() -> None:
    from trainvitals.server.security import new_token

    tokens = [new_token() for _ in range(5000)]  # token_urlsafe alone: ~78 of them would
    assert not [t for t in tokens if t.startswith("-")]
    assert len(set(tokens)) == 5000 and all(len(t) >= 32 for t in tokens)


@pytest.mark.slow
def test_sync_uploads_a_spool_of_the_previous_version_beside_a_new_one(
        monitors: MakeMonitor, start_server: Callable[..., ServerThread], rest: Rest,
        token: str, tmp_path: Path) -> None:
    """Version 0.1 spooled JSON lines (``<stem>.<first>.jsonl``); a spool left by it is
    uploaded by this version's sync, together with one this version wrote (rows)."""
    spool = tmp_path / "spool"
    spool.mkdir()
    session = "0123456789abcdef"
    old: list[Record] = [RunStart(run="from-0.1", session=session, seq=0, time=1.0)]
    old += [Step(run="from-0.1", session=session, seq=i + 1, step=i, time=2.0 + i,
                 loss=[0.5, math.nan, math.inf, -math.inf][i % 4]) for i in range(8)]
    old.append(RunEnd(run="from-0.1", session=session, seq=9, time=20.0))
    legacy = spool / f"{stream_stem('from-0.1', 0, session)}.000000000000.jsonl"
    legacy.write_text("".join(encode(r) + "\n" for r in old))  # what 0.1 wrote, line by line
    mon = monitors("from-now", None)
    train(mon, range(6))
    mon.close()
    assert {p.suffix for files in spool_files(spool).values() for p in files} == \
        {".jsonl", ".tvs"}

    srv = start_server()
    done = sync(spool, srv, token)
    assert done.returncode == 0, done.stderr
    found = rows(rest, srv)
    assert (found["from-0.1"]["status"], found["from-0.1"]["steps"]) == ("finished", 8)
    body = rest(srv, f"/runs/{found['from-0.1']['id']}/series", name="loss")
    assert body["series"][0]["values"] == [0.5, "NaN", "Infinity", "-Infinity"] * 2
    assert losses(rest, srv, found["from-now"]["id"]) == {0: list(range(6))}
    assert spool_files(spool) == {}  # everything acknowledged: nothing left
