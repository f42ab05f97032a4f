"""The one table of rules. Adding a rule touches one module (its ``RULE``) and this list.

The order is the order in which the engine judges a step; it matters only in that
``nonfinite`` runs first (it ends the episode a known origin explains).
"""

from __future__ import annotations

from collections.abc import Mapping

from trainvitals.protocol import Step
from trainvitals.server.alerts.rule import Rule
from trainvitals.server.alerts.rules import (
    amp,
    clip,
    grad_explosion,
    headroom,
    module_learning,
    no_learning,
    nonfinite,
    normalisation,
    spike,
    stall,
    threshold,
)

__all__ = ["RULES", "RULE_NAMES", "explains", "observed", "rule_named"]

RULES: tuple[Rule, ...] = (
    nonfinite.RULE,
    clip.RULE,
    stall.RULE,
    spike.RULE,
    grad_explosion.RULE,
    threshold.RULE,
    headroom.RULE,
    no_learning.RULE,
    module_learning.RULE,
    normalisation.RULE,
    amp.RULE,
)
RULE_NAMES = tuple(rule.name for rule in RULES)
_BY_NAME = {rule.name: rule for rule in RULES}


def rule_named(name: str) -> Rule | None:
    """The registered rule called ``name`` (None for a name stored by another version)."""
    return _BY_NAME.get(name)


def observed(rule: str, series: str, step: Step, values: Mapping[str, float]) -> bool:
    """Whether ``step`` let ``rule`` judge ``series`` at all: only such steps count as clean.
    Unknown (restored) rules judge every step, so their alerts still resolve."""
    known = _BY_NAME.get(rule)
    return True if known is None else known.observes(series, step, values)


def explains(cause: str, effect: str) -> bool:
    """Whether findings of rule ``effect`` follow from a cause found by rule ``cause``."""
    known = _BY_NAME.get(cause)
    return known is not None and effect in known.explains
