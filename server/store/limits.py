"""Server limits that the protocol decoder cannot check alone, and the error they raise.

The decoder already bounds every frame (size, names, map entries, integers). What needs the
stored state — how many runs exist, how many series a run has — is checked by the store inside
the write transaction, so a frame that would pass a limit is rolled back whole: nothing partial
is stored, and the sender gets an ``error`` frame with code ``limit_exceeded``.
"""

from __future__ import annotations

from dataclasses import dataclass

from trainvitals.protocol.errors import LIMIT_EXCEEDED

__all__ = ["LimitExceeded", "Limits"]


@dataclass(frozen=True)
class Limits:
    """How much one server keeps; ``None`` means unlimited."""

    max_runs: int | None = None
    max_series_per_run: int | None = None


class LimitExceeded(Exception):
    """A write would pass one of the ``Limits``; the transaction is rolled back."""

    code = LIMIT_EXCEEDED

    @classmethod
    def runs(cls, limit: int, name: str) -> LimitExceeded:
        """The error for a new run beyond ``max_runs``."""
        return cls(f"cannot create run {name!r}: this server keeps at most {limit} runs "
                   "(setting max_runs)")

    @classmethod
    def series(cls, limit: int, run: str, series: str) -> LimitExceeded:
        """The error for a new series beyond ``max_series_per_run``."""
        return cls(f"cannot add series {series!r} to run {run!r}: a run has at most {limit} "
                   "series (setting max_series_per_run)")
