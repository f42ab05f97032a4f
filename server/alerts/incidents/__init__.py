"""Incidents: one root cause on one run, one alarm, opened at the onset step, saying why.

The rules (``alerts.rules``) say *what* holds at a step, per series — one NaN can make a dozen
such findings. The incident model groups them the way Prometheus Alertmanager groups and
inhibits alerts, but from the training signal itself: findings that follow from an open
incident become its evidence (``causes``: the causal order and which rule explains which),
the most upstream finding is its root, and ``diagnose`` turns the evidence into a headline
with numbers and a remedy. Notifications count incidents, never findings.
"""

from trainvitals.server.alerts.incidents.engine import IncidentEngine
from trainvitals.server.alerts.incidents.model import Evidence, Incident, IncidentChange

__all__ = ["Evidence", "Incident", "IncidentChange", "IncidentEngine"]
