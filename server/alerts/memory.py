"""What the rules remember of one (run, rank) between steps, bounded by the config's windows."""

from __future__ import annotations

import math
from collections import deque
from dataclasses import replace

from trainvitals.protocol import NonFiniteOrigin, Step
from trainvitals.protocol.series import BACKWARD_FACTOR
from trainvitals.server.alerts.model import AlertConfig

__all__ = ["MAX_WATCHED_TENSORS", "RankMemory", "Streak", "grad_stalled", "loss_stalled",
           "merge_origin"]

MAX_WATCHED_TENSORS = 1000  # tensors whose max the headroom trend follows, per rank


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


def merge_origin(old: NonFiniteOrigin | None, new: NonFiniteOrigin) -> NonFiniteOrigin:
    """``new``, with what ``old`` knew of the same origin step and ``new`` does not say (a
    later op-level trace completes the origin its step reported; the store merges alike)."""
    if old is None or old.step != new.step:
        return new
    known = {f: getattr(old, f) for f in ("module", "module_type", "param", "op", "source")
             if getattr(new, f) is None}
    return replace(new, **known)


def loss_stalled(step: Step) -> bool:
    """Nothing was backpropagated: ``loss_used`` is exactly 0, the loss guard zeroed the loss,
    or the gradient that reached the raw loss was exactly 0."""
    # None means "not reported", so a step without loss_used or a clip event proves nothing.
    zeroed = step.clip is not None and step.clip.action == "zeroed"
    # attach() sees a `loss * 0.0` guard as the gradient that reaches the raw loss: exactly 0
    nothing_back = step.scalars.get(BACKWARD_FACTOR) == 0 and step.loss is not None \
        and step.loss > 0
    return zeroed or step.loss_used == 0 or nothing_back


def grad_stalled(step: Step) -> bool:
    """The pre-clip gradient is exactly 0 although the raw loss is positive and was not zeroed."""
    # A zeroed loss already explains a zero gradient; counting it here would raise a second,
    # redundant critical alert for one cause. This catches the other causes: detached graphs,
    # a loss that does not depend on any trainable parameter.
    positive = step.loss is not None and step.loss > 0
    return step.grad_norm == 0 and positive and not loss_stalled(step)


class RankMemory:
    """Rolling state of one rank: stall streaks, recent clip events, recent finite raw losses
    and gradient norms, the latest non-finite origin, recent maxima of tensors that feed
    ``exp``, and the streaks of steps without learning (whole model and per module)."""

    __slots__ = (
        "_window",
        "amp_streak",
        "clipped",
        "clips",
        "grad_logs",
        "grad_streak",
        "learning_streak",
        "loss_streak",
        "losses",
        "maxima",
        "module_streaks",
        "origin",
        "origin_active",
    )

    def __init__(self, config: AlertConfig) -> None:
        self.loss_streak = Streak()
        self.grad_streak = Streak()
        self.clips: deque[bool] = deque(maxlen=config.clip_window)
        self.clipped = 0  # how many True in ``clips``, kept so the rate costs O(1) per step
        self.losses: deque[float] = deque(maxlen=config.spike_window)
        self.origin: NonFiniteOrigin | None = None  # the latest, kept to merge a late trace
        self.origin_active = False  # until a clean step ends the episode it explains
        self.maxima: dict[str, deque[tuple[int, float]]] = {}
        self._window = config.headroom_window
        self.learning_streak = Streak()
        self.grad_logs: deque[float] = deque(maxlen=config.spike_window)  # log10 grad norms
        self.module_streaks: dict[str, Streak] = {}  # per module, for module_learning
        self.amp_streak = Streak()  # consecutive steps a GradScaler skipped

    def advance(self, step: Step) -> None:
        """Count ``step`` into the streaks and the clip window (not the loss baseline)."""
        self.loss_streak.update(loss_stalled(step), step.step)
        self.grad_streak.update(grad_stalled(step), step.step)
        if len(self.clips) == self.clips.maxlen and self.clips[0]:
            self.clipped -= 1
        clipped = step.clip is not None
        self.clips.append(clipped)
        self.clipped += clipped
        if step.origin is not None:
            self.origin = merge_origin(self.origin, step.origin)
            self.origin_active = True
        self._remember_maxima(step)

    def active_origin(self) -> NonFiniteOrigin | None:
        """The origin that explains the current run of non-finite steps, if one is known."""
        return self.origin if self.origin_active else None

    def _remember_maxima(self, step: Step) -> None:
        """The finite max of every tensor with a headroom, for the trend rule."""
        for name, stats in step.tensors.items():
            if stats.headroom is None or not math.isfinite(stats.max):
                continue
            history = self.maxima.get(name)
            if history is None:
                if len(self.maxima) >= MAX_WATCHED_TENSORS:
                    continue
                history = self.maxima[name] = deque(maxlen=self._window)
            history.append((step.step, stats.max))

    def remember_loss(self, step: Step) -> None:
        """Add the step's raw loss (and its gradient norm) to the spike baselines, once the
        rules have judged them."""
        if step.loss is not None and math.isfinite(step.loss):
            self.losses.append(step.loss)
        g = step.grad_norm
        if g is not None and math.isfinite(g) and g > 0:
            self.grad_logs.append(math.log10(g))
