"""Reconnect delays as a pure generator: exponential, capped, with jitter.

The sender thread consumes it; tests read it without sleeping.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

__all__ = ["backoff_delays"]


def backoff_delays(
    initial: float = 0.1, factor: float = 2.0, cap: float = 10.0, jitter: float = 0.1,
    rng: random.Random | None = None,
) -> Iterator[float]:
    """Endless delays in seconds: initial, initial*factor, … up to cap, each ±jitter."""
    rng = rng or random.Random()
    delay = initial
    while True:
        yield delay * (1 + rng.uniform(-jitter, jitter))
        delay = min(delay * factor, cap)
