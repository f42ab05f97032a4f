"""Real ``trainvitals serve`` subprocesses for the end-to-end tests, and a bounded poll
(both from ``tests.support``).

``serve(data, log, token=...)`` starts ``python -m trainvitals.cli serve`` on a free (or given)
port, waits for ``/healthz`` and stops it after the test — resuming it first if the test froze
it with SIGSTOP. ``wait_for(condition, what)`` polls every 50 ms, bounded by a count: the tests
assert what happens, never how fast.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from tests.support.serve import ServeProcess
from tests.support.waiting import poll_until

WaitFor = Callable[..., None]


@pytest.fixture
def serve() -> Iterator[Callable[..., ServeProcess]]:
    """Starts servers: ``serve(data, log, token=..., port=None, args=())``; stops them after."""
    made: list[ServeProcess] = []

    def start(data: Path, log: Path, *, token: str, port: int | None = None,
              args: Sequence[str] = ()) -> ServeProcess:
        srv = ServeProcess(token=token, port=port, data=data, log=log, args=args)
        made.append(srv)
        return srv

    yield start
    for srv in made:
        srv.stop()


@pytest.fixture
def wait_for() -> WaitFor:
    """``wait_for(condition, what, polls=1200)``: see ``poll_until``."""
    return poll_until
