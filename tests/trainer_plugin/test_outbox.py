"""The pure delivery core: every acked record is deleted exactly once, every unacked one resent.

No sockets and no threads: the outbox is driven by hand and by hypothesis against a model
server that stores each record once, acks the contiguous prefix it has, loses frames when a
connection breaks and refuses frames when a commit fails.
"""

from __future__ import annotations

from collections import Counter, deque

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from trainvitals.trainer_plugin.delivery.outbox import Acked, Outbox, Sent


def test_records_go_out_in_order_within_the_window_and_batch() -> None:
    box = Outbox(window=5, batch=3)
    assert box.next_frame() is None  # not connected
    box.connection_opened()
    assert box.next_frame() is None  # nothing spooled
    box.spooled(10)
    assert box.next_frame() == (0, 3)
    assert box.frame_sent(0, 3) == Sent(fresh=3, resent=0)
    assert box.next_frame() == (3, 2)  # the window holds 5 unacknowledged records
    box.frame_sent(3, 2)
    assert box.next_frame() is None and box.in_flight
    assert box.ack(1) == Acked(0, 1)
    assert box.next_frame() == (5, 2)


def test_an_ack_deletes_each_record_once_and_old_or_future_acks_do_nothing() -> None:
    box = Outbox()
    box.connection_opened()
    box.spooled(4)
    box.frame_sent(0, 4)
    assert box.ack(2) == Acked(0, 2)
    assert box.ack(2) is None and box.ack(0) is None
    assert box.ack(99) == Acked(3, 3)  # clamped to what was spooled
    assert (box.acked, box.pending, box.in_flight) == (3, 0, False)


def test_a_reconnect_resends_everything_unacknowledged_and_counts_it_as_resent() -> None:
    box = Outbox(batch=10)
    box.connection_opened()
    box.spooled(6)
    box.frame_sent(0, 6)
    box.ack(1)
    box.connection_lost()
    assert box.next_frame() is None
    box.connection_opened()
    assert box.next_frame() == (2, 4)
    box.spooled(8)
    assert box.frame_sent(2, 6) == Sent(fresh=2, resent=4)


def test_a_failed_commit_sends_again_from_the_first_unacknowledged_record() -> None:
    box = Outbox(batch=2)
    box.connection_opened()
    box.spooled(4)
    box.frame_sent(0, 2)
    box.frame_sent(2, 2)
    box.ack(1)
    box.unavailable()
    assert box.next_frame() == (2, 2)


def test_a_fatal_error_halts_delivery_for_good() -> None:
    box = Outbox()
    box.connection_opened()
    box.spooled(3)
    box.fatal("too many runs")
    box.connection_opened()
    assert (box.halted, box.next_frame(), box.pending) == ("too many runs", None, 3)


def test_a_reopened_spool_starts_after_what_was_acknowledged() -> None:
    box = Outbox(acked=41, next_seq=50)
    box.connection_opened()
    assert box.next_frame() == (42, 8)
    with pytest.raises(ValueError, match="below the first unacknowledged"):
        Outbox(acked=10, next_seq=5)
    with pytest.raises(ValueError, match="at least 1"):
        Outbox(window=0)


class Delivery(RuleBasedStateMachine):
    """An outbox, its spool's numbering, and a model server with one connection at a time."""

    @initialize(window=st.integers(1, 12), batch=st.integers(1, 6), acked=st.integers(-1, 3))
    def start(self, window: int, batch: int, acked: int) -> None:
        self.box = Outbox(acked=acked, next_seq=acked + 1, window=window, batch=batch)
        self.first_unacked_at_start = acked + 1
        self.stored: set[int] = set(range(acked + 1))  # the server has what was acked before
        self.wire: deque[tuple[int, int]] = deque()  # frames sent, not yet answered
        self.deleted: Counter[int] = Counter()
        self.ever_sent: set[int] = set()
        self.fresh = 0

    def _high_water(self) -> int:
        top = -1
        while top + 1 in self.stored:
            top += 1
        return top

    @rule(n=st.integers(1, 5))
    def spool(self, n: int) -> None:
        self.box.spooled(self.box.next_seq + n)

    @precondition(lambda self: not self.box.connected)
    @rule()
    def connect(self) -> None:
        self.box.connection_opened()
        if not self.box.halted:
            frame = self.box.next_frame()
            if frame is not None:  # a reconnect starts at the first unacknowledged record
                assert frame[0] == self.box.acked + 1

    @precondition(lambda self: self.box.connected)
    @rule(stored_before_cut=st.booleans())
    def cut(self, stored_before_cut: bool) -> None:
        if stored_before_cut and self.wire:  # committed, but the ack never arrived
            first, count = self.wire[0]
            self.stored.update(range(first, first + count))
        self.wire.clear()
        self.box.connection_lost()

    @rule(fraction=st.floats(0.01, 1.0))
    def send(self, fraction: float) -> None:
        frame = self.box.next_frame()
        if frame is None:
            return
        first, most = frame
        assert first >= self.box.acked + 1
        count = max(1, int(most * fraction))  # the byte budget may cut a frame short
        sent = self.box.frame_sent(first, count)
        new = set(range(first, first + count)) - self.ever_sent
        assert sent.fresh == len(new) and sent.fresh + sent.resent == count
        self.ever_sent |= new
        self.fresh += sent.fresh
        self.wire.append((first, count))
        assert first + count - 1 - self.box.acked <= self.box.window

    @precondition(lambda self: bool(self.wire))
    @rule()
    def commit(self) -> None:
        first, count = self.wire.popleft()
        self.stored.update(range(first, first + count))
        self._deliver_ack(self._high_water())

    @precondition(lambda self: bool(self.wire))
    @rule()
    def commit_fails(self) -> None:
        self.wire.popleft()  # nothing of the frame was stored
        self.box.unavailable()

    @rule(back=st.integers(0, 5))
    def stale_ack(self, back: int) -> None:
        assert self.box.ack(self.box.acked - back) is None

    def _deliver_ack(self, seq: int) -> None:
        newly = self.box.ack(seq)
        if newly is not None:
            self.deleted.update(range(newly.first, newly.last + 1))

    @invariant()
    def each_acked_record_is_deleted_exactly_once(self) -> None:
        if not hasattr(self, "box"):
            return
        expected = range(self.first_unacked_at_start, self.box.acked + 1)
        assert sorted(self.deleted) == list(expected)
        assert all(n == 1 for n in self.deleted.values())
        assert self.box.acked <= max(self.ever_sent, default=self.first_unacked_at_start - 1)

    def teardown(self) -> None:
        """Deliver the rest: every unacknowledged record is (re)sent and acked in the end."""
        if not hasattr(self, "box"):
            return
        self.wire.clear()
        self.box.connection_lost()
        self.box.connection_opened()
        for _ in range(10 * (self.box.next_seq + 1)):
            frame = self.box.next_frame()
            if frame is None:
                break
            self.box.frame_sent(*frame)
            self.ever_sent.update(range(frame[0], frame[0] + frame[1]))
            self.stored.update(range(frame[0], frame[0] + frame[1]))
            self._deliver_ack(self._high_water())
        assert self.box.pending == 0 and not self.box.in_flight
        self.each_acked_record_is_deleted_exactly_once()
        assert sorted(self.deleted) == list(range(self.first_unacked_at_start,
                                                  self.box.next_seq))


TestDelivery = Delivery.TestCase
TestDelivery.settings = settings(max_examples=150, stateful_step_count=30, deadline=None,
                                 suppress_health_check=[HealthCheck.too_slow])
