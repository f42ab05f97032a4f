"""The plugin's side of a server in trouble: the spool's backlog report (cheap: counts and time
marks, no record read), what a real server makes of it, and what ``close()`` and ``sync`` say
while the server refuses to store.

The server is real (uvicorn on a free port, SQLite); it refuses because its free-space floor
is set above the whole disk, so every frame is answered ``unavailable — storage full: …``.
A disk that really fills: tests/e2e/test_disk_full.py.
"""

from __future__ import annotations

import io
import logging
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.waiting import poll_until
from trainvitals import Monitor
from trainvitals.protocol import RunStart, Step
from trainvitals.server import ServerThread
from trainvitals.trainer_plugin.delivery import spool as spool_module
from trainvitals.trainer_plugin.delivery.spool import Spool, spool_files
from trainvitals.trainer_plugin.delivery.upload import sync

MakeMonitor = Callable[..., Monitor]
FULL = {"min_free_bytes": 1 << 60, "health_interval": 0.2}  # a floor above any disk


class Clock:
    """The spool's clock, moved by hand (monotonic and wall time together)."""

    def __init__(self) -> None:
        self.now = 5000.0

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return 1.7e9 + self.now


def step(i: int) -> Step:
    return Step(run="r", session="s", seq=0, step=i, loss=float(i))  # the spool numbers it


def test_the_backlog_counts_what_is_unacknowledged_and_dates_the_oldest(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    monkeypatch.setattr(spool_module, "time", clock)
    spool = Spool(tmp_path, "r.r0.s", max_bytes=1 << 20, max_record_bytes=1 << 20)
    spool.append_many([(RunStart(run="r", session="s"), True), (step(0), False)])  # seq 0, 1
    clock.now += 0.5
    spool.append_many([(step(1), False)])  # seq 2: within a second of the last mark
    clock.now += 10.0
    spool.append_many([(step(2), False), (step(3), False)])  # seq 3, 4
    clock.now += 5.0
    b = spool.backlog()
    assert (b.records, b.max_bytes, b.last_seq, b.oldest_age) == (5, 1 << 20, 4, 15.5)
    assert b.bytes == spool.size > 0
    spool.ack(1)
    assert spool.backlog().oldest_age == 15.5  # seq 2 shares seq 0's mark: never understated
    spool.ack(2)
    assert (spool.backlog().records, spool.backlog().oldest_age) == (2, 5.0)
    spool.ack(4)
    assert (spool.backlog().records, spool.backlog().oldest_age) == (0, 0.0)
    clock.now += 100.0
    spool.append_many([(step(4), False)])  # after everything was acknowledged: a fresh mark
    clock.now += 2.0
    assert (spool.backlog().records, spool.backlog().oldest_age) == (1, 2.0)
    spool.close()


def test_marks_stay_bounded_and_the_oldest_is_kept(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    monkeypatch.setattr(spool_module, "time", clock)
    spool = Spool(None, "r.r0.s", max_bytes=1 << 30, max_record_bytes=1 << 20)
    start = clock.now
    for i in range(3 * spool_module.MAX_MARKS):
        spool.append_many([(step(i), False)])
        clock.now += spool_module.MARK_EVERY
    assert len(spool._marks) <= spool_module.MAX_MARKS
    assert spool.backlog().oldest_age == clock.now - start  # the first record's time


def test_a_reopened_spool_has_no_limit_and_its_age_comes_from_its_files(tmp_path: Path) -> None:
    spool = Spool(tmp_path, "r.r0.s", max_bytes=1 << 20, max_record_bytes=1 << 20)
    spool.append_many([(RunStart(run="r", session="s"), True), (step(0), False)])
    spool.close()
    (files,) = spool_files(tmp_path).values()
    an_hour_ago = time.time() - 3600
    for f in files:
        os.utime(f, (an_hour_ago, an_hour_ago))
    again = Spool.reopen(files)
    b = again.backlog()
    assert (b.records, b.max_bytes, b.last_seq) == (2, 0, 1)
    assert b.oldest_age >= 3600  # at least as old as the file's last write
    again.close()


def metric(srv: ServerThread, name: str) -> float:
    text = httpx.get(f"{srv.http_url}/metrics", timeout=30).text
    m = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    assert m is not None, f"{name} not in /metrics"
    return float(m.group(1))


def open_conditions(srv: ServerThread) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = httpx.get(f"{srv.http_url}/api/conditions", params={
        "state": "open"}, timeout=30).json()["conditions"]
    return found


def test_refused_records_raise_spool_backlog_show_in_metrics_and_close_says_why(
        start_server: Callable[..., ServerThread], monitors: MakeMonitor,
        caplog: pytest.LogCaptureFixture) -> None:
    srv = start_server(**FULL, backlog_warn_s=1)
    mon = monitors("refused", srv.ws_url, close_timeout=1.0)
    for i in range(30):
        mon.log_step(i, loss=float(i))
    poll_until(lambda: any(c["kind"] == "spool_backlog" and c["run"] == "refused"
                           for c in open_conditions(srv)), "spool_backlog on the run")
    (backlog,) = [c for c in open_conditions(srv) if c["kind"] == "spool_backlog"]
    assert backlog["scope"] == "run" and backlog["rank"] == 0
    assert backlog["headline"].startswith("rank 0 has 31 record(s) the server has not stored")
    assert metric(srv, "trainvitals_plugin_streams_reporting") == 1
    assert metric(srv, "trainvitals_plugin_spool_records") == 31  # run start and 30 steps
    assert metric(srv, "trainvitals_plugin_spool_bytes") > 0
    assert metric(srv, "trainvitals_plugin_oldest_unacked_seconds") >= 1
    assert mon.stats().server_error.startswith("unavailable — storage full: ")

    with caplog.at_level(logging.WARNING, logger="trainvitals"):
        stats = mon.close()
    assert stats.pending == 32
    (said,) = [r.getMessage() for r in caplog.records if "not acknowledged by" in r.getMessage()]
    assert ("32 record(s) of run 'refused' not acknowledged by "
            f"{srv.ws_url} within 1 s (the server's last error: unavailable — storage full: "
            ) in said
    assert "send them with: trainvitals sync" in said


def test_sync_says_the_servers_reason_as_it_waits_and_what_was_left_per_stream(
        start_server: Callable[..., ServerThread], monitors: MakeMonitor, dead_url: str,
        token: str, tmp_path: Path) -> None:
    mon = monitors("later", dead_url, close_timeout=0.2)
    for i in range(5):
        mon.log_step(i, loss=float(i))
    assert mon.close().pending == 7
    srv = start_server(**FULL)
    out = io.StringIO()
    result = sync(tmp_path / "spool", srv.ws_url + "/ws/ingest", token, timeout=4, out=out)
    said = out.getvalue().splitlines()
    reasons = [line for line in said if line.startswith("server: unavailable — storage full: ")]
    assert len(reasons) == 1 and reasons[0].endswith("; retrying in 1 s"), said
    assert not result.ok and (result.uploaded, result.left) == (0, 7)
    (stream,) = result.per_stream
    assert (stream.label, stream.total, stream.acknowledged, stream.left) == (
        "later (rank 0)", 7, 0, 7)
    assert stream.why.startswith("timed out after 4 s; the server's last error: unavailable — "
                                 "storage full: ")
    assert said[-1].startswith("trainvitals sync: later (rank 0): 0 of 7 record(s) "
                               "acknowledged, 7 left (timed out after 4 s; ")
    assert said[-1].endswith("— run sync again")

    ok = start_server(data_dir=tmp_path / "other-data")  # a server that can store
    done = sync(tmp_path / "spool", ok.ws_url + "/ws/ingest", token, timeout=60,
                out=io.StringIO())
    assert done.ok and (done.uploaded, done.left) == (7, 0)
    assert [(s.acknowledged, s.left, s.why) for s in done.per_stream] == [(7, 0, "")]


def test_while_the_server_cannot_store_each_try_sends_one_frame_not_a_window(
        start_server: Callable[..., ServerThread], monitors: MakeMonitor, token: str,
        tmp_path: Path) -> None:
    """3,000 records are a dozen frames (256 a frame, 2,048 in flight): a server that refuses
    them all is asked once per try, and each try is one pause more — not eight refusals for
    the window sent at once, each pausing again."""
    mon = monitors("many", None)
    for i in range(3000):
        mon.log_step(i, loss=float(i))
    assert mon.close().pending == 3002
    srv = start_server(**FULL)
    out = io.StringIO()
    result = sync(tmp_path / "spool", srv.ws_url + "/ws/ingest", token, timeout=8, out=out)
    assert result.left == 3002
    pauses = re.findall(r"; retrying in (\d+) s$", out.getvalue(), re.M)
    assert pauses and [int(p) for p in pauses] == sorted({int(p) for p in pauses})
    refused = metric(srv, 'trainvitals_frames_refused_total{reason="storage_floor"}')
    # (+2: frames sent before the first refusal came back are answered once, with no pause)
    assert 1 <= refused <= len(pauses) + 2, (refused, out.getvalue())
