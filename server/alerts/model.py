"""Alerting records: a rule's finding, the alert it opens, the changes sinks receive, the config.

``Alert`` is frozen and replaced on every change, so an ``AlertChange`` can hand out the alert
itself as its snapshot: a sink may keep it, queue it or send it later without copying.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, cast

__all__ = [
    "Alert",
    "AlertChange",
    "AlertConfig",
    "AlertKey",
    "Details",
    "Finding",
    "Op",
    "Severity",
    "Threshold",
]

Severity = Literal["warning", "critical"]
AlertState = Literal["open", "resolved"]
ChangeKind = Literal["opened", "updated", "resolved"]
Op = Literal[">", ">=", "<", "<="]
Details = dict[str, float | int | str]
AlertKey = tuple[str, int, str, str]  # (run, rank, rule, series)

_OPS: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le,
}
_SEVERITIES = ("warning", "critical")
# Greedy series so the *last* operator splits: series names may themselves contain "<" or ">".
_THRESHOLD = re.compile(
    r"^\s*(?P<series>.*\S)\s*(?P<op>>=|<=|>|<)\s*(?P<value>[^<>=:]*?)\s*(?::\s*(?P<severity>\S*))?\s*$"
)


@dataclass(frozen=True, slots=True)
class Finding:
    """One rule's verdict that its condition holds at one step for one series."""

    rule: str
    series: str
    severity: Severity
    message: str
    details: Details
    first_step: int


@dataclass(frozen=True, slots=True)
class Alert:
    """One condition on one series of one rank, open from the step it fired until it resolved.

    ``count`` is how many observed steps the condition held while the alert was open, the opening
    step included; ``message`` and ``details`` describe the latest of those steps.
    """

    run: str
    rank: int
    rule: str
    series: str
    severity: Severity
    state: AlertState
    first_step: int
    opened_step: int
    last_step: int
    resolved_step: int | None
    count: int
    message: str
    details: Details = field(default_factory=dict)

    @property
    def key(self) -> AlertKey:
        """``(run, rank, rule, series)``: at most one open alert per key."""
        return (self.run, self.rank, self.rule, self.series)


@dataclass(frozen=True, slots=True)
class AlertChange:
    """An alert opened, held again, or resolved; ``alert`` is its state after the change."""

    kind: ChangeKind
    alert: Alert


@dataclass(frozen=True, slots=True)
class Threshold:
    """A user condition on one series, e.g. ``tensor/depth_raw/max > 15``."""

    series: str
    op: Op
    value: float
    severity: Severity = "warning"

    def __post_init__(self) -> None:
        if not self.series:
            raise ValueError("threshold series must not be empty")
        if self.op not in _OPS:
            raise ValueError(f"threshold operator must be one of > >= < <=, got {self.op!r}")
        if math.isnan(self.value):
            raise ValueError("threshold value must not be NaN: no value would ever compare")
        if self.severity not in _SEVERITIES:
            raise ValueError(f"threshold severity must be warning or critical: {self.severity!r}")

    @classmethod
    def parse(cls, text: str) -> Threshold:
        """Read ``"<series><op><value>[:warning|:critical]"``, e.g. ``"loss>=1e3:critical"``."""
        match = _THRESHOLD.match(text)
        if match is None:
            raise ValueError(
                f"bad threshold {text!r}: expected <series><op><value>[:critical], "
                "op one of > >= < <=, e.g. 'tensor/depth_raw/max>15'"
            )
        try:
            number = float(match["value"])
        except ValueError:
            raise ValueError(f"bad threshold {text!r}: {match['value']!r} is no number") from None
        severity = match["severity"] if match["severity"] is not None else "warning"
        if severity not in _SEVERITIES:
            raise ValueError(f"bad threshold {text!r}: severity must be warning or critical")
        return cls(match["series"], cast(Op, match["op"]), number, cast(Severity, severity))

    def holds(self, x: float) -> bool:
        """Whether ``x`` meets the condition (False for NaN, like any comparison)."""
        return _OPS[self.op](x, self.value)

    def __str__(self) -> str:
        suffix = ":critical" if self.severity == "critical" else ""
        number = f"{self.value:g}"
        if float(number) != self.value:  # keep every digit the user wrote rather than round
            number = repr(self.value)
        return f"{self.series}{self.op}{number}{suffix}"


@dataclass(frozen=True, slots=True)
class AlertConfig:
    """Windows and limits of the rules; every window bounds the memory kept per rank."""

    stall_steps: int = 10
    resolve_after: int = 5
    clip_window: int = 100
    spike_window: int = 50
    spike_min_history: int = 20
    spike_threshold: float = 10.0
    thresholds: tuple[Threshold, ...] = ()
    # headroom: fractions of the dtype's margin ln(max) that may be left before a warning /
    # critical alert, and the trend rule. 0.5 warns from the first step on which exp(max)²
    # would overflow the dtype — a squared error of the exp output, or exp times a similar
    # factor, overflows there (float32/bf16: max above 44.4; float16: above 5.5); 0.05 is
    # critical (float32: above 84.3; float16: above 10.5). Then the trend
    # rule: the window of steps it fits and how many steps ahead it projects the overflow.
    headroom_warning: float = 0.5
    headroom_critical: float = 0.05
    headroom_window: int = 10
    headroom_horizon: int = 1000
    no_learning_ratio: float = 1e-8  # ‖Δθ‖/‖θ‖ at or below this is "did not move"
    explosion_factor: float = 100.0  # pre-clip grad norm this many × its median: an explosion
    explosion_history: int = 10  # finite grad norms needed before the explosion rule judges
    amp_skip_steps: int = 20  # consecutive GradScaler skips that make an incident
    amp_scale_floor: float = 1.0  # a GradScaler's scale below this while skipping: collapsed

    def __post_init__(self) -> None:
        for name in ("stall_steps", "resolve_after", "clip_window", "spike_window",
                     "headroom_horizon"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 2 <= self.spike_min_history <= self.spike_window:
            raise ValueError(
                f"spike_min_history must be in [2, spike_window={self.spike_window}], "
                f"got {self.spike_min_history}"
            )
        if not self.spike_threshold > 0:
            raise ValueError(f"spike_threshold must be positive, got {self.spike_threshold}")
        if not 0 <= self.headroom_critical <= self.headroom_warning < 1:
            raise ValueError(
                "headroom fractions must satisfy 0 <= critical <= warning < 1, got "
                f"critical={self.headroom_critical}, warning={self.headroom_warning}")
        if self.headroom_window < 3:
            raise ValueError(f"headroom_window must be at least 3, got {self.headroom_window}")
        if not self.explosion_factor > 1:
            raise ValueError(f"explosion_factor must be > 1, got {self.explosion_factor}")
        if self.explosion_history < 2:
            raise ValueError(f"explosion_history must be at least 2, got "
                             f"{self.explosion_history}")
        if not self.no_learning_ratio >= 0:
            raise ValueError(f"no_learning_ratio must be >= 0, got {self.no_learning_ratio}")
        # A list would make the frozen config unhashable and shareable-by-mutation.
        object.__setattr__(self, "thresholds", tuple(self.thresholds))
