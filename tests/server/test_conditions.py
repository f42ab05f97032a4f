"""The pieces that measure and judge the server's own trouble, one at a time, without a server:
the conditions board (open, escalate, throttled updates, resolve), the free-space floor's
levels, and what trainers' delivery reports make of their backlogs and drops.

The clock is passed in (the board is pure; the reports take a clock), so nothing here sleeps.
The same parts against a real server, a real disk and real trainers: test_readiness.py and
tests/e2e/test_disk_full.py.
"""

from __future__ import annotations

import errno
import sqlite3
from collections.abc import Sequence
from pathlib import Path

import pytest

from trainvitals.protocol import Batch, RunStart, Step
from trainvitals.protocol.messages import Backlog
from trainvitals.server.alerts.conditions import KINDS, ConditionChange, Conditions, Reading
from trainvitals.server.ingest.deliveries import DROP_QUIET_S, DeliveryReports
from trainvitals.server.ingest.storage import (
    WHAT_TO_DO,
    BelowFloor,
    FreeSpace,
    is_disk_full,
    mib,
)
from trainvitals.server.notify.conditions import ConditionFeed
from trainvitals.server.store import WriteResult

MiB = 1 << 20


# --------------------------------------------------------------------------- the board


def warning(text: str = "disk nearly full", **facts: float | int | str) -> Reading:
    return Reading("warning", text, dict(facts))


def critical(text: str = "storage full", **facts: float | int | str) -> Reading:
    return Reading("critical", text, dict(facts))


def test_a_condition_opens_once_and_says_its_remedy() -> None:
    board = Conditions()
    change = board.hold("server", "", "storage_full", warning(free=10), now=100.0)
    assert change is not None and change.kind == "opened"
    c = change.condition
    assert (c.id, c.scope, c.run, c.state, c.severity) == (
        "server:storage_full#1", "server", "", "open", "warning")
    assert c.remedy == KINDS["storage_full"][1]
    assert (c.opened_at, c.last_at, c.resolved_at, c.facts) == (100.0, 100.0, None, {"free": 10})
    assert board.hold("server", "", "storage_full", warning(free=10), now=101.0) is None
    assert [x.id for x in board.open()] == ["server:storage_full#1"]


def test_a_rising_severity_escalates_at_once_and_a_falling_one_is_said_at_once() -> None:
    board = Conditions(update_every=5.0)
    board.hold("server", "", "storage_full", warning(), now=0.0)
    up = board.hold("server", "", "storage_full", critical(), now=0.5)
    assert up is not None and up.kind == "escalated"
    assert (up.condition.state, up.condition.severity, up.condition.escalated_at) == (
        "escalated", "critical", 0.5)
    down = board.hold("server", "", "storage_full", warning(), now=0.6)
    assert down is not None and down.kind == "updated"
    assert (down.condition.state, down.condition.severity) == ("open", "warning")
    assert down.condition.number == 1  # the same condition throughout


def test_changed_numbers_are_kept_at_once_but_announced_at_most_every_update_every() -> None:
    board = Conditions(update_every=5.0)
    board.hold("run", "r", "spool_backlog", warning("3 records", records=3), now=0.0)
    def hold(n: int, now: float) -> ConditionChange | None:
        return board.hold("run", "r", "spool_backlog", warning(f"{n} records", records=n), now)

    assert hold(4, now=1.0) is None
    current = board.get("run", "r", "spool_backlog")
    assert current is not None and (current.headline, current.facts) == ("4 records",
                                                                         {"records": 4})
    later = hold(5, now=5.0)
    assert later is not None and later.kind == "updated" and later.condition.headline == \
        "5 records"
    assert hold(6, now=9.0) is None
    assert hold(6, now=60.0) is None  # nothing new: no update even after the interval


def test_clearing_resolves_once_and_a_new_opening_is_a_new_condition() -> None:
    board = Conditions()
    board.hold("run", "r", "records_dropped", Reading("warning", "dropped", {}, (1,), 7), now=0.0)
    resolved = board.clear("run", "r", "records_dropped", now=3.0, step=9)
    assert resolved is not None and resolved.kind == "resolved"
    c = resolved.condition
    assert (c.state, c.resolved_at, c.last_at, c.opened_step, c.resolved_step, c.ranks) == (
        "resolved", 3.0, 3.0, 7, 9, (1,))
    assert board.clear("run", "r", "records_dropped", now=4.0) is None
    assert board.open() == [] and [x.id for x in board.resolved()] == ["run:records_dropped#1"]
    again = board.hold("run", "r", "records_dropped", warning(), now=5.0)
    assert again is not None and again.kind == "opened" and again.condition.number == 2
    assert board.clear("server", "", "storage_full", now=6.0) is None  # never opened


def test_open_conditions_list_critical_first_then_oldest_and_filter_by_scope_and_run() -> None:
    board = Conditions()
    board.hold("run", "a", "spool_backlog", warning(), now=1.0)
    board.hold("server", "", "replica_lagging", warning(), now=2.0)
    board.hold("server", "", "database_unreachable", critical(), now=3.0)
    board.hold("run", "b", "spool_backlog", critical(), now=4.0)
    assert [(c.kind, c.run) for c in board.open()] == [
        ("database_unreachable", ""), ("spool_backlog", "b"), ("spool_backlog", "a"),
        ("replica_lagging", "")]
    assert [c.kind for c in board.open(scope="server")] == ["database_unreachable",
                                                            "replica_lagging"]
    assert [c.run for c in board.open(scope="run", run="a")] == ["a"]
    board.forget("a")
    assert [c.run for c in board.open(scope="run")] == ["b"]


def test_a_kind_belongs_to_one_scope() -> None:
    with pytest.raises(ValueError, match="storage_full is a server condition, not a run one"):
        Conditions().hold("run", "r", "storage_full", critical(), now=0.0)


def test_the_feed_hands_each_change_to_every_sink_even_past_a_broken_one() -> None:
    class Broken:
        def deliver_conditions(self, changes: Sequence[ConditionChange]) -> None:
            raise RuntimeError("this sink is broken")

    heard = Heard()
    feed = ConditionFeed([Broken(), heard], clock=lambda: 42.0)
    feed.hold("server", "", "commits_failing", critical("commits fail"))
    feed.hold("server", "", "commits_failing", critical("commits fail"))
    feed.clear("server", "", "commits_failing")
    assert heard.kinds() == [("opened", "commits_failing"), ("resolved", "commits_failing")]
    assert heard.changes[0].condition.opened_at == 42.0


# --------------------------------------------------------------------------- the floor


class Disk:
    """What ``shutil.disk_usage`` would say of a disk of ``total`` bytes with ``free`` free."""

    def __init__(self, total: int, free: int) -> None:
        self.total, self.free = total, free
        self.error: OSError | None = None

    def __call__(self, path: Path) -> tuple[int, int, int]:
        if self.error is not None:
            raise self.error
        return self.total, self.total - self.free, self.free


def test_the_floor_is_the_larger_of_bytes_and_percent(tmp_path: Path) -> None:
    assert FreeSpace(tmp_path, min_free_bytes=64 * MiB, min_free_percent=10).floor(
        1000 * MiB) == 100 * MiB
    assert FreeSpace(tmp_path, min_free_bytes=256 * MiB, min_free_percent=10).floor(
        1000 * MiB) == 256 * MiB


def test_levels_go_low_then_refusing_and_come_back_only_a_margin_above(tmp_path: Path) -> None:
    disk = Disk(1000 * MiB, 500 * MiB)
    space = FreeSpace(tmp_path, min_free_bytes=100 * MiB, usage=disk)  # margin: 10 MiB

    def level(free_mib: float) -> str:
        disk.free = int(free_mib * MiB)
        return space.measure().level

    assert [level(f) for f in (500, 200, 199, 101, 100, 99.9)] == [
        "ok", "ok", "low", "low", "low", "refusing"]
    assert [level(f) for f in (100, 109.9, 110)] == ["refusing", "refusing", "low"]
    assert [level(f) for f in (200, 209.9, 210)] == ["low", "low", "ok"]
    last = space.last
    assert last is not None and (last.free, last.total, last.floor) == (210 * MiB, 1000 * MiB,
                                                                       100 * MiB)
    assert last.describe() == (f"210.0 MiB free of 1,000.0 MiB on {tmp_path} (the server keeps "
                               "100.0 MiB free: min_free_bytes / min_free_percent)")


def test_below_the_floor_check_refuses_saying_how_much_is_free_and_what_to_do(
        tmp_path: Path) -> None:
    disk = Disk(64 * MiB, 3 * MiB)
    space = FreeSpace(tmp_path, min_free_bytes=8 * MiB, usage=disk)
    with pytest.raises(BelowFloor) as refused:
        space.check()
    text = str(refused.value)
    assert text.startswith(f"storage full: 3.0 MiB free on {tmp_path}, below the 8.0 MiB the "
                           "server keeps free (min_free_bytes); nothing of this frame was stored")
    assert text.endswith(WHAT_TO_DO)
    disk.free = 32 * MiB
    space.check()  # back above the floor and its margin: no refusal


def test_a_disk_that_cannot_be_measured_is_unknown_and_refuses_nothing(tmp_path: Path) -> None:
    disk = Disk(64 * MiB, 32 * MiB)
    disk.error = FileNotFoundError(errno.ENOENT, "No such file or directory")
    space = FreeSpace(tmp_path, min_free_bytes=8 * MiB, usage=disk)
    space.check()
    assert space.last is not None and space.last.level == "unknown"
    assert space.last.describe().startswith(f"cannot measure free space on {tmp_path}: "
                                            "FileNotFoundError")


def test_a_data_dir_not_made_yet_is_measured_on_its_parents_disk(tmp_path: Path) -> None:
    space = FreeSpace(tmp_path / "not" / "yet", min_free_bytes=0)
    measured = space.measure()
    assert measured.level == "ok" and measured.free > 0 and measured.total >= measured.free


def test_what_counts_as_a_full_disk() -> None:
    assert is_disk_full(sqlite3.OperationalError("database or disk is full"))
    assert is_disk_full(OSError(errno.ENOSPC, "No space left on device"))
    assert is_disk_full(OSError(errno.EDQUOT, "Disk quota exceeded"))
    assert not is_disk_full(sqlite3.OperationalError("database is locked"))
    assert not is_disk_full(OSError(errno.EACCES, "Permission denied"))
    assert mib(3 * MiB + MiB // 10) == "3.1 MiB" and mib(20 << 30) == "20.0 GiB"


# --------------------------------------------------------------------------- delivery reports


class Heard:
    """A condition sink that keeps what it is told."""

    def __init__(self) -> None:
        self.changes: list[ConditionChange] = []

    def deliver_conditions(self, changes: Sequence[ConditionChange]) -> None:
        self.changes.extend(changes)

    def kinds(self) -> list[tuple[str, str]]:
        return [(c.kind, c.condition.kind) for c in self.changes]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def reports(warn_s: float = 60.0) -> tuple[DeliveryReports, Heard, Clock, ConditionFeed]:
    heard, clock = Heard(), Clock()
    feed = ConditionFeed([heard], clock=clock)
    return DeliveryReports(feed, backlog_warn_s=warn_s, clock=clock), heard, clock, feed


def batch(first: int, count: int, backlog: Backlog | None, *, run: str = "r", rank: int = 0,
          dropped: int = 0) -> Batch:
    records = [Step(run=run, rank=rank, session="s", seq=first + i, step=first + i - 1,
                    time=1.0) for i in range(count)]
    return Batch(tuple(records), dropped, backlog)


def stored(run: str, top: int, rank: int = 0) -> WriteResult:
    return WriteResult([], {}, {(run, rank, "s"): top})


def test_a_growing_backlog_warns_after_backlog_warn_s_and_resolves_once_stored() -> None:
    rep, heard, clock, feed = reports(warn_s=60.0)
    conn = rep.connect()
    # seq 0..10 spooled, 0 acknowledged: 10 records left, the oldest 10 s old
    rep.reported(conn, batch(1, 10, Backlog(10, 10_000, 1_000_000, 10.0, 10)))
    assert heard.changes == []
    t = rep.totals()
    assert (t.streams, t.records, t.bytes, t.oldest_age, t.dropped) == (1, 10, 10_000, 10.0, 0)
    clock.now += 49.0  # nothing stored meanwhile: the age grows by the clock
    rep.tick()
    assert heard.changes == [] and rep.totals().oldest_age == 59.0
    clock.now += 1.0
    rep.tick()
    assert heard.kinds() == [("opened", "spool_backlog")]
    c = heard.changes[0].condition
    assert (c.scope, c.run, c.severity, c.ranks, c.opened_step) == ("run", "r", "warning", (0,), 9)
    assert c.headline.startswith("rank 0 has 10 record(s) the server has not stored, the oldest "
                                 "60 s old (spool 0.0 MiB of 1.0 MiB)")
    assert c.facts["records"] == 10 and c.facts["connected"] == 1
    rep.committed(stored("r", 10))  # everything stored: nothing left
    assert heard.kinds()[-1] == ("resolved", "spool_backlog")
    assert rep.totals().records == 0 and feed.board.open() == []


def test_a_nearly_full_spool_is_critical_and_a_partial_store_shrinks_the_backlog() -> None:
    rep, heard, _, _ = reports(warn_s=60.0)
    conn = rep.connect()
    rep.reported(conn, batch(1, 100, Backlog(100, 950, 1000, 1.0, 100)))  # 95 % full
    assert heard.kinds() == [("opened", "spool_backlog")]
    assert heard.changes[0].condition.severity == "critical"
    assert "records are dropped once it is full" in heard.changes[0].condition.headline
    rep.committed(stored("r", 50))  # half stored: 50 left, 475 bytes, 47.5 % full, young
    assert heard.kinds()[-1] == ("resolved", "spool_backlog")
    t = rep.totals()
    assert (t.records, t.bytes) == (50, 475)


def test_a_trainer_that_leaves_records_behind_keeps_the_condition_open_until_they_arrive() -> None:
    rep, heard, clock, feed = reports(warn_s=60.0)
    trainer = rep.connect()
    rep.reported(trainer, batch(1, 5, Backlog(5, 500, 0, 120.0, 5)))  # no spool limit (sync)
    assert heard.kinds() == [("opened", "spool_backlog")]
    assert "(spool 0.0 MiB)" in heard.changes[0].condition.headline  # no "of 0.0 MiB"
    rep.disconnected(trainer)
    open_now = feed.board.get("run", "r", "spool_backlog")
    assert open_now is not None
    assert rep.totals().streams == 0  # the gauges count connected trainers only
    clock.now += 10.0
    rep.tick()
    gone = feed.board.get("run", "r", "spool_backlog")
    assert gone is not None and "its trainer has gone" in gone.headline
    assert gone.facts["connected"] == 0
    sync = rep.connect()  # `trainvitals sync` delivers them
    rep.reported(sync, batch(1, 5, Backlog(5, 500, 0, 130.0, 5)))
    rep.committed(stored("r", 5))
    assert heard.kinds()[-1] == ("resolved", "spool_backlog")
    rep.disconnected(sync)
    assert rep.totals() == rep.totals().__class__(0, 0, 0, 0.0, 0)


def test_each_rank_is_its_own_stream_and_the_worst_names_the_condition() -> None:
    rep, _, _, feed = reports(warn_s=60.0)
    a, b = rep.connect(), rep.connect()
    rep.reported(a, batch(1, 3, Backlog(3, 30, 1000, 5.0, 3), rank=0))
    rep.reported(b, batch(1, 8, Backlog(8, 80, 1000, 90.0, 8), rank=1))
    c = feed.board.get("run", "r", "spool_backlog")
    assert c is not None and c.ranks == (1, 0) and c.headline.startswith("rank 1 has 8 record(s)")
    assert "(and 1 more rank(s))" in c.headline and c.facts["records"] == 11
    assert rep.totals().records == 11 and rep.totals().streams == 2


def test_growing_drops_warn_and_resolve_after_a_quiet_spell() -> None:
    rep, heard, clock, feed = reports()
    conn = rep.connect()
    rep.reported(conn, batch(1, 2, Backlog(2, 20, 1000, 0.0, 2), dropped=0))
    rep.committed(stored("r", 2))
    assert heard.changes == []
    rep.reported(conn, batch(3, 1, Backlog(1, 10, 1000, 0.0, 3), dropped=7))
    assert heard.kinds() == [("opened", "records_dropped")]
    c = heard.changes[0].condition
    assert c.headline == ("rank 0 dropped 7 record(s) so far: the plugin's queue or spool was "
                          "full; they are lost")
    assert rep.totals().dropped == 7
    clock.now += DROP_QUIET_S - 1
    rep.tick()
    assert feed.board.get("run", "r", "records_dropped") is not None
    clock.now += 1
    rep.tick()
    assert heard.kinds()[-1] == ("resolved", "records_dropped")


def test_a_frame_of_several_streams_or_without_a_backlog_reports_no_backlog() -> None:
    rep, heard, clock, _ = reports(warn_s=1.0)
    conn = rep.connect()
    mixed = Batch((RunStart(run="a", session="s"), RunStart(run="b", session="s")), 0,
                  Backlog(2, 20, 1000, 999.0, 1))
    rep.reported(conn, mixed)
    rep.reported(conn, batch(1, 3, None))  # an older sender: steps noted, no backlog
    clock.now += 100.0
    rep.tick()
    assert heard.changes == [] and rep.totals().records == 0
