"""Alert rules for training runs: pure, I/O-free judgements of ``Step`` records.

``AlertEngine.observe(step)`` returns ``AlertChange``s (opened, updated, resolved) that delivery
sinks consume; the rules themselves are plain functions in ``rules`` and ``spike``. Times are
steps, never wall clock, so the same records always give the same alerts.
"""

from trainvitals.server.alerts.engine import AlertEngine
from trainvitals.server.alerts.model import (
    Alert,
    AlertChange,
    AlertConfig,
    AlertKey,
    Details,
    Finding,
    Severity,
    Threshold,
)
from trainvitals.server.alerts.registry import RULE_NAMES as RULES

__all__ = [
    "RULES",
    "Alert",
    "AlertChange",
    "AlertConfig",
    "AlertEngine",
    "AlertKey",
    "Details",
    "Finding",
    "Severity",
    "Threshold",
]
