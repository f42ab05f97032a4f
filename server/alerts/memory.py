"""What the rules remember of one (run, rank) between steps, bounded by the config's windows."""

from __future__ import annotations

import math
from collections import deque

from trainvitals.protocol import Step
from trainvitals.server.alerts.model import AlertConfig

__all__ = ["RankMemory", "Streak", "grad_stalled", "loss_stalled"]


class Streak:
    """Consecutive steps on which a condition held, and the step where the run of them began."""

    __slots__ = ("length", "start")

    def __init__(self) -> None:
        self.length = 0
        self.start: int | None = None

    def update(self, hit: bool, step: int) -> None:
        """Extend the streak with ``step`` if ``hit``, else break it."""
        if not hit:
            self.length, self.start = 0, None
            return
        if self.length == 0:
            self.start = step
        self.length += 1


def loss_stalled(step: Step) -> bool:
    """Nothing was backpropagated: ``loss_used`` is exactly 0 or the loss guard zeroed the loss."""
    # None means "not reported", so a step without loss_used or a clip event proves nothing.
    zeroed = step.clip is not None and step.clip.action == "zeroed"
    return zeroed or step.loss_used == 0


def grad_stalled(step: Step) -> bool:
    """The pre-clip gradient is exactly 0 although the raw loss is positive and was not zeroed."""
    # A zeroed loss already explains a zero gradient; counting it here would raise a second,
    # redundant critical alert for one cause. This catches the other causes: detached graphs,
    # a loss that does not depend on any trainable parameter.
    positive = step.loss is not None and step.loss > 0
    return step.grad_norm == 0 and positive and not loss_stalled(step)


class RankMemory:
    """Rolling state of one rank: stall streaks, recent clip events, recent finite raw losses."""

    __slots__ = ("clipped", "clips", "grad_streak", "loss_streak", "losses")

    def __init__(self, config: AlertConfig) -> None:
        self.loss_streak = Streak()
        self.grad_streak = Streak()
        self.clips: deque[bool] = deque(maxlen=config.clip_window)
        self.clipped = 0  # how many True in ``clips``, kept so the rate costs O(1) per step
        self.losses: deque[float] = deque(maxlen=config.spike_window)

    def advance(self, step: Step) -> None:
        """Count ``step`` into the streaks and the clip window (not the loss baseline)."""
        self.loss_streak.update(loss_stalled(step), step.step)
        self.grad_streak.update(grad_stalled(step), step.step)
        if len(self.clips) == self.clips.maxlen and self.clips[0]:
            self.clipped -= 1
        clipped = step.clip is not None
        self.clips.append(clipped)
        self.clipped += clipped

    def remember_loss(self, step: Step) -> None:
        """Add the step's raw loss to the spike baseline, once the spike rule has judged it."""
        if step.loss is not None and math.isfinite(step.loss):
            self.losses.append(step.loss)
