"""Waiting for something to happen, bounded by a count: tests assert what, never how fast."""

from __future__ import annotations

import threading
from collections.abc import Callable

__all__ = ["poll_until"]


def poll_until(condition: Callable[[], bool], what: str, polls: int = 1200,
               every: float = 0.05) -> None:
    """Poll every ``every`` seconds until ``condition()``; fail after ``polls`` polls."""
    pause = threading.Event()
    for _ in range(polls):
        if condition():
            return
        pause.wait(every)
    raise AssertionError(f"timed out waiting for {what}")
