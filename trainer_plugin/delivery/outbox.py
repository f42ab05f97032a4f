"""The delivery state of one stream, as a pure state machine: no sockets, no threads, no clock.

In the style of websockets' sans-I/O core: the I/O layer (``link.Link``) tells the outbox what
happened — records were spooled, a connection opened or broke, a frame went out, the server
acknowledged or refused — and asks it what to do: which records to send next, which to
delete from the spool, whether to back off or stop. Every rule of docs/reliability.md that is
about *what* is sent lives here, and is tested on its own (tests/trainer_plugin/test_outbox.py)
without a server:

* records are numbered ``0, 1, 2, …`` by the spool; the outbox sends them in order, at most
  ``window`` unacknowledged at a time and at most ``batch`` per frame;
* an ack of ``seq`` covers every record up to ``seq``; each newly covered record is handed
  out for deletion exactly once (``Acked.first … Acked.last``);
* after a (re)connect, or an ``unavailable`` error (a failed commit), sending starts again
  from the first unacknowledged record — the server stores each record once, so resending is
  always safe — and records sent a second time are counted as resent;
* a fatal error halts delivery for good; the records stay in the spool for
  ``trainvitals sync``.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Acked", "Outbox", "Sent"]


@dataclass(frozen=True, slots=True)
class Sent:
    """What one frame carried: ``fresh`` records sent for the first time, ``resent`` again."""

    fresh: int
    resent: int


@dataclass(frozen=True, slots=True)
class Acked:
    """Records ``first`` … ``last`` are newly acknowledged: delete them from the spool."""

    first: int
    last: int


class Outbox:
    """One stream's delivery state; see the module docstring.

    ``acked`` is the highest acknowledged seq (``-1``: none), ``next_seq`` the seq the spool
    will give its next record — both as the spool knows them when delivery (re)starts.
    """

    def __init__(self, *, acked: int = -1, next_seq: int = 0, window: int = 2048,
                 batch: int = 256) -> None:
        if window < 1 or batch < 1:
            raise ValueError(f"window and batch must be at least 1, got {window}, {batch}")
        if next_seq < acked + 1:
            raise ValueError(f"next_seq {next_seq} is below the first unacknowledged record")
        self.acked, self.next_seq = acked, next_seq
        self.window, self.batch = window, batch
        self.connected = False
        self.halted = ""  # why delivery stopped for good (a fatal server error), or ""
        self._next = acked + 1  # the seq to send next
        self._sent_up_to = acked  # highest seq ever sent (first sends versus resends)

    # ------------------------------------------------------------ what happened

    def spooled(self, next_seq: int) -> None:
        """The spool now holds records up to ``next_seq - 1``."""
        self.next_seq = max(self.next_seq, next_seq)

    def connection_opened(self) -> None:
        """A connection is open: everything unacknowledged goes out again, in order."""
        self.connected = True
        self._next = self.acked + 1

    def connection_lost(self) -> None:
        """The connection is gone; what was in flight counts as not sent."""
        self.connected = False
        self._next = self.acked + 1

    def frame_sent(self, first: int, count: int) -> Sent:
        """Records ``first`` … ``first + count - 1`` went out in one frame."""
        last = first + count - 1
        fresh = max(0, last - max(self._sent_up_to, first - 1))
        self._sent_up_to = max(self._sent_up_to, last)
        self._next = last + 1
        return Sent(fresh=fresh, resent=count - fresh)

    def ack(self, seq: int) -> Acked | None:
        """The server has every record up to ``seq``; the records newly covered, or None."""
        top = min(seq, self.next_seq - 1)  # a record never spooled cannot be acknowledged
        if top <= self.acked:
            return None
        newly = Acked(self.acked + 1, top)
        self.acked = top
        self._next = max(self._next, top + 1)
        return newly

    def unavailable(self) -> None:
        """The server could not commit some frame (nothing of it was stored): send again from
        the first unacknowledged record (after a backoff, which is the I/O layer's)."""
        self._next = self.acked + 1

    def fatal(self, reason: str) -> None:
        """The server refuses this stream for good (a limit): stop delivering."""
        self.halted = reason or "refused by the server"
        self.connected = False

    # ------------------------------------------------------------ what to do

    def next_frame(self) -> tuple[int, int] | None:
        """``(first seq, most records)`` of the next frame to send, or None: not connected,
        halted, nothing new, or the window of unacknowledged records is full."""
        if not self.connected or self.halted:
            return None
        first = max(self._next, self.acked + 1)
        room = self.window - (first - self.acked - 1)
        if room <= 0 or first >= self.next_seq:
            return None
        return first, min(self.batch, room, self.next_seq - first)

    @property
    def in_flight(self) -> bool:
        """Whether records were sent that the server has not acknowledged yet."""
        return self._sent_up_to > self.acked

    @property
    def idle(self) -> bool:
        """Nothing is waiting to be sent (every spooled record is sent or acknowledged)."""
        return max(self._next, self.acked + 1) >= self.next_seq

    @property
    def pending(self) -> int:
        """Records spooled and not yet acknowledged."""
        return self.next_seq - 1 - self.acked
