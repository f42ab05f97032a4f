"""What a rule is: one pure function from a step (and what is remembered) to findings, with the
metadata the engine, the incident model and the docs read from one table (``registry.RULES``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from trainvitals.protocol import Step
from trainvitals.server.alerts.memory import RankMemory
from trainvitals.server.alerts.model import AlertConfig, Finding

__all__ = ["HEALTH", "Observes", "Rule", "RuleContext", "every_step"]

# The rules about the training signal itself. A cause found by the broad ones (a non-finite
# value, a spike, an overflow risk, a degenerate denominator) explains what follows of these.
HEALTH = frozenset({"nonfinite", "clip", "stall", "spike", "headroom", "normalisation",
                    "no_learning", "grad_explosion", "module_learning", "threshold", "amp"})

Observes = Callable[[str, Step, Mapping[str, float]], bool]


@dataclass(frozen=True, slots=True)
class RuleContext:
    """Everything a rule may read at one step of one rank.

    ``memory`` has already counted this step (streaks, clip window, tensor maxima) except the
    spike baseline, which takes the loss only after every rule judged it. ``open_series`` are
    the series on which this rule has an open alert on this rank (a held alert may need less
    to stay open than a new one to open).
    """

    step: Step
    values: Mapping[str, float]
    memory: RankMemory
    config: AlertConfig
    open_series: frozenset[str] = frozenset()


def every_step(series: str, step: Step, values: Mapping[str, float]) -> bool:
    """The default ``observes``: every step lets the rule judge its series."""
    return True


@dataclass(frozen=True, slots=True)
class Rule:
    """One rule: its name (stable: stored alerts and sinks use it), what it judges, what it
    explains.

    ``explains`` names the rules whose later findings follow from a cause this rule found: an
    open incident rooted in (or holding) a finding of this rule takes them as evidence instead
    of opening an alarm of their own. ``observes(series, step, values)`` says whether a step
    let the rule judge ``series`` at all — only such steps count as clean when an alert
    resolves (a tensor reported every tenth step says nothing on the other nine).
    """

    name: str
    judge: Callable[[RuleContext], list[Finding]]
    severity: str  # for the docs: "critical", "warning", "warning or critical", "yours"
    summary: str  # for the docs: "fires when ..."
    explains: frozenset[str] = field(default_factory=frozenset)
    observes: Observes = every_step
