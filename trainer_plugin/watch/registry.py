"""The Monitor's watches, and what they add to each step record.

Training thread: ``WatchSet`` holds the module watches (``Monitor.watch``), the optimizer
watches (``Monitor.watch_optimizer``) and the scalars they and ``Monitor.denominator`` stage
(under ``x/<name>``, in the step's single transfer). ``seal()`` at ``log_step`` runs a pending
op-level trace, then returns a ``WatchedStep``. Sender thread: ``WatchedStep.resolve`` turns
the host copies into scalars and the step's ``origin``.

Origins travel one per step record. When more are ready at once (a new origin and an earlier
step's op-level trace), the rest wait in a small outbox for the next records. A trainer that
stops at its first non-finite step (many abort on a NaN loss) makes no later record:
``Monitor.close`` then calls ``finish``, which waits briefly for the sender to judge the last
steps, runs a requested trace, and hands back what is left for records of their own.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch

from trainvitals.protocol import NonFiniteOrigin, check_name
from trainvitals.trainer_plugin.values.staging import StepStaging
from trainvitals.trainer_plugin.watch.modules import ModuleWatch
from trainvitals.trainer_plugin.watch.optimizer import UpdateWatch
from trainvitals.trainer_plugin.watch.origin import WatchFrame

__all__ = ["Outbox", "WatchSet", "WatchedStep"]

Number = torch.Tensor | float | int


class Outbox:
    """Origins waiting for a step record to carry them, and how many steps were judged."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._items: deque[NonFiniteOrigin] = deque(maxlen=64)
        self._judged = 0

    def exchange(self, new: Iterable[NonFiniteOrigin]) -> NonFiniteOrigin | None:
        """Sender thread: queue ``new`` (one more step judged) and take the oldest origin."""
        with self._changed:
            self._items.extend(new)
            self._judged += 1
            self._changed.notify_all()
            return self._items.popleft() if self._items else None

    def wait_judged(self, count: int, timeout: float) -> bool:
        """Wait until ``count`` steps were judged; False on timeout."""
        with self._changed:
            return self._changed.wait_for(lambda: self._judged >= count, timeout)

    def drain(self) -> list[NonFiniteOrigin]:
        """Every origin still waiting."""
        with self._changed:
            items, self._items = list(self._items), deque(maxlen=64)
            return items


@dataclass(frozen=True)
class WatchedStep:
    """What the watches add to one step; ``resolve`` runs on the sender thread."""

    scalars: tuple[str, ...]
    frames: tuple[tuple[ModuleWatch, WatchFrame], ...]
    traced: tuple[NonFiniteOrigin, ...]
    outbox: Outbox

    def resolve(self, staged: dict[str, list[float]],
                step: int) -> tuple[dict[str, float], NonFiniteOrigin | None]:
        """The extra scalars and the origin this step record carries."""
        scalars = {name: staged[f"x/{name}"][0] for name in self.scalars}
        found = [o for watch, frame in self.frames
                 if (o := watch.judge(frame, staged, step)) is not None]
        return scalars, self.outbox.exchange([*found, *self.traced])


class WatchSet:
    """The watches of one Monitor (training thread)."""

    def __init__(self, staging: StepStaging) -> None:
        self._staging = staging
        self._modules: list[ModuleWatch] = []
        self._optimizers: list[UpdateWatch] = []
        self._scalars: dict[str, None] = {}
        self._outbox = Outbox()
        self._sealed = 0
        self.last_step: int | None = None  # the step of the latest record, for late origins

    def watch(self, model: torch.nn.Module, **options: Any) -> ModuleWatch:
        """Hook ``model``; see ``ModuleWatch``."""
        watch = ModuleWatch(model, **options)
        self._modules.append(watch)
        return watch

    def watch_optimizer(self, optimizer: torch.optim.Optimizer,
                        model: torch.nn.Module | None = None, *, every: int = 1) -> UpdateWatch:
        """Hook ``optimizer``'s steps; see ``UpdateWatch``."""
        watch = UpdateWatch(optimizer, model, self.scalar, every=every)
        self._optimizers.append(watch)
        return watch

    def scalar(self, name: str, value: Number) -> None:
        """Stage a scalar for this step under ``name`` (a later one of the same name wins)."""
        check_name(name)
        if isinstance(value, torch.Tensor) and value.numel() != 1:
            raise ValueError(f"{name!r} must be a single value, got shape {tuple(value.shape)}")
        self._staging.add(f"x/{name}", value)
        self._scalars[name] = None

    def seal(self, step: int) -> WatchedStep | None:
        """End step ``step``: run a requested trace, stage the module watches' values."""
        self.last_step = step
        self._modules = [w for w in self._modules if not w.removed]
        if not self._modules and not self._scalars:
            return None
        traced = tuple(o for w in self._modules if (o := w.poll()) is not None)
        frames = tuple((w, w.seal(self._staging, f"w{i}")) for i, w in enumerate(self._modules))
        names, self._scalars = tuple(self._scalars), {}
        self._sealed += 1
        return WatchedStep(names, frames, traced, self._outbox)

    def recorded(self) -> bool:
        """Whether a module watch recorded anything since the last ``seal`` (a step under way)."""
        return any(w.recorded() for w in self._modules if not w.removed) or bool(self._scalars)

    def finish(self, timeout: float) -> list[NonFiniteOrigin]:
        """At close: origins that no step record will carry any more.

        Waits up to ``timeout`` for the sender to judge every sealed step when a watch could
        still be asked for its op-level trace, then runs it.
        """
        if any(w.may_trace() for w in self._modules):
            self._outbox.wait_judged(self._sealed, timeout)
        traced = [o for w in self._modules if (o := w.poll()) is not None]
        return [*self._outbox.drain(), *traced]
