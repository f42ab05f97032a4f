"""Fan-out of live updates to browsers.

Backpressure policy: publishing never waits. Each viewer has a bounded queue; a viewer whose
queue is full (a slow browser or network) loses its queued messages and gets one
``{"type": "resync"}`` message instead, after which the page reloads what it shows from the
REST API. Ingest and other viewers are never slowed by one slow viewer.

With several replicas on one database, ``listener`` (the replica relay) is told of every
``publish``; messages that came from another replica go out through ``deliver``, which only
queues them for this hub's viewers (so they are never relayed again).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Hub", "Viewer"]

ALL_RUNS = "*"
Listener = Callable[[str | None, dict[str, Any]], None]


@dataclass(eq=False)
class Viewer:
    """One connected browser: what it follows and what waits to be sent to it."""

    queue: asyncio.Queue[dict[str, Any]]
    runs: set[str] = field(default_factory=set)  # run names, or "*" for every run
    resyncs: int = 0

    def follows(self, run: str) -> bool:
        """Whether updates of ``run`` go to this viewer."""
        return ALL_RUNS in self.runs or run in self.runs


class Hub:
    """Holds connected viewers and hands each update to the ones that follow its run."""

    def __init__(self, queue_size: int = 512) -> None:
        self._queue_size = queue_size
        self._viewers: set[Viewer] = set()
        self.listener: Listener | None = None  # told of every publish; must not block

    def __len__(self) -> int:
        return len(self._viewers)

    def connect(self) -> Viewer:
        """Register a new viewer; remember to ``disconnect`` it."""
        viewer = Viewer(asyncio.Queue(maxsize=self._queue_size))
        self._viewers.add(viewer)
        return viewer

    def disconnect(self, viewer: Viewer) -> None:
        """Forget a viewer."""
        self._viewers.discard(viewer)

    def publish(self, run: str | None, message: dict[str, Any]) -> None:
        """Queue ``message`` for viewers of ``run`` (``None``: for every viewer); never waits."""
        self.deliver(run, message)
        if self.listener is not None:
            self.listener(run, message)

    def deliver(self, run: str | None, message: dict[str, Any]) -> None:
        """Like ``publish`` but for this hub's viewers only: the listener is not told."""
        for viewer in self._viewers:
            if run is None or viewer.follows(run):
                self._offer(viewer, message)

    def _offer(self, viewer: Viewer, message: dict[str, Any]) -> None:
        try:
            viewer.queue.put_nowait(message)
        except asyncio.QueueFull:
            while not viewer.queue.empty():
                viewer.queue.get_nowait()
            viewer.resyncs += 1
            viewer.queue.put_nowait({"type": "resync"})
