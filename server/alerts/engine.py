"""The alert lifecycle: rules' findings open, hold and (with hysteresis) resolve alerts per rank.

Volume: every step on which an open alert's condition holds emits one ``updated`` change, so a
10,000-step stall emits 1 ``opened`` and 9,990 ``updated``. Each costs one ``dataclasses.replace``
of a frozen alert around a message the rule built anyway. An update is a full snapshot, so a sink
may keep only the latest per key (throttle, coalesce) without losing anything; ``opened`` and
``resolved`` are the changes worth notifying.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import replace

from trainvitals.protocol import Step
from trainvitals.protocol.series import step_values
from trainvitals.server.alerts.memory import RankMemory
from trainvitals.server.alerts.model import Alert, AlertChange, AlertConfig, Finding
from trainvitals.server.alerts.registry import RULES, observed
from trainvitals.server.alerts.rule import Rule, RuleContext

__all__ = ["AlertEngine"]

log = logging.getLogger("trainvitals.server")

_Key = tuple[str, str]  # (rule, series) within one rank


class _Rank:
    """One (run, rank): its rolling memory, its open alerts, and their clean-step counters."""

    __slots__ = ("alerts", "clean", "memory")

    def __init__(self, config: AlertConfig) -> None:
        self.memory = RankMemory(config)
        self.alerts: dict[_Key, Alert] = {}
        self.clean: dict[_Key, int] = {}


class AlertEngine:
    """Runs every rule on each step and keeps at most one open alert per (run, rank, rule, series).

    Not thread-safe: feed it from one task. Memory per rank is bounded by the config's windows;
    call ``forget`` when a run is deleted so the number of ranks stays bounded too.
    """

    def __init__(self, config: AlertConfig | None = None,
                 rules: tuple[Rule, ...] = RULES) -> None:
        self.config = config if config is not None else AlertConfig()
        self.rules = rules
        self.rule_errors: dict[str, int] = {}  # rule → how often it raised (for /metrics)
        self._ranks: dict[tuple[str, int], _Rank] = {}

    def observe(self, step: Step, values: Mapping[str, float] | None = None
                ) -> list[AlertChange]:
        """Judge one step: opened/updated per condition that held, then resolved alerts.

        ``values`` is ``step_values(step)`` when the caller has it already (the writer does)."""
        rank = self._rank(step.run, step.rank)
        values = step_values(step) if values is None else values
        findings = self._findings(rank, step, values)
        changes = [self._hold(rank, step, finding) for finding in findings.values()]
        for key in [key for key in rank.alerts if key not in findings]:
            if observed(*key, step, values):
                resolved = self._clean_step(rank, key, step.step)
                if resolved is not None:
                    changes.append(resolved)
        return changes

    def load_open(self, alerts: Iterable[Alert]) -> None:
        """Restore alerts that were open before a restart, so they continue instead of duplicating.

        Resolved alerts are skipped; an alert already open under the same key is kept. Rolling
        windows start empty, but an open stall is held again by its first stalled step.
        """
        for alert in alerts:
            if alert.state != "open":
                continue
            rank = self._rank(alert.run, alert.rank)
            key = (alert.rule, alert.series)
            if key not in rank.alerts:
                rank.alerts[key] = alert
                rank.clean[key] = 0

    def forget(self, run: str) -> None:
        """Drop every rank's memory and open alerts of ``run``, without emitting changes."""
        for key in [key for key in self._ranks if key[0] == run]:
            del self._ranks[key]

    def open_alerts(self, run: str | None = None) -> list[Alert]:
        """The open alerts, of one run or of all, ordered by rank and then by opening order."""
        ranks = sorted(key for key in self._ranks if run is None or key[0] == run)
        return [alert for key in ranks for alert in self._ranks[key].alerts.values()]

    def _rank(self, run: str, rank: int) -> _Rank:
        state = self._ranks.get((run, rank))
        if state is None:
            state = self._ranks[(run, rank)] = _Rank(self.config)
        return state

    def _findings(self, rank: _Rank, step: Step, values: Mapping[str, float]
                  ) -> dict[_Key, Finding]:
        memory, config = rank.memory, self.config
        memory.advance(step)
        found = [finding for rule in self.rules
                 for finding in self._judge(rule, RuleContext(step, values, memory, config,
                                                              _open_series(rank, rule.name)))]
        memory.remember_loss(step)  # after spike judged this loss against the earlier ones
        merged: dict[_Key, Finding] = {}
        for finding in found:
            key = (finding.rule, finding.series)
            # Several thresholds may watch one series; the most severe one that holds speaks.
            if key not in merged or _outranks(finding, merged[key]):
                merged[key] = finding
        return merged

    def _judge(self, rule: Rule, ctx: RuleContext) -> list[Finding]:
        """``rule``'s findings; a rule that raises on odd input (an empty tensor, a NaN
        threshold, steps out of order) finds nothing this step, is logged once and counted,
        and the other rules go on."""
        try:
            return rule.judge(ctx)
        except Exception:
            first = rule.name not in self.rule_errors
            self.rule_errors[rule.name] = self.rule_errors.get(rule.name, 0) + 1
            if first:
                log.exception("alert rule %r failed at step %d of run %r (logged once; "
                              "counted in trainvitals_rule_errors_total)", rule.name,
                              ctx.step.step, ctx.step.run)
            return []

    def _hold(self, rank: _Rank, step: Step, finding: Finding) -> AlertChange:
        key = (finding.rule, finding.series)
        rank.clean[key] = 0
        alert = rank.alerts.get(key)
        if alert is None:
            alert = Alert(
                run=step.run, rank=step.rank, rule=finding.rule, series=finding.series,
                severity=finding.severity, state="open", first_step=finding.first_step,
                opened_step=step.step, last_step=step.step, resolved_step=None, count=1,
                message=finding.message, details=finding.details,
            )
            rank.alerts[key] = alert
            return AlertChange("opened", alert)
        alert = replace(
            alert, severity=finding.severity, last_step=step.step, count=alert.count + 1,
            message=finding.message, details=finding.details,
        )
        rank.alerts[key] = alert
        return AlertChange("updated", alert)

    def _clean_step(self, rank: _Rank, key: _Key, step: int) -> AlertChange | None:
        rank.clean[key] += 1
        if rank.clean[key] < self.config.resolve_after:
            return None
        alert = replace(rank.alerts.pop(key), state="resolved", resolved_step=step)
        del rank.clean[key]
        return AlertChange("resolved", alert)


def _open_series(rank: _Rank, rule: str) -> frozenset[str]:
    return frozenset(series for name, series in rank.alerts if name == rule)


def _outranks(new: Finding, old: Finding) -> bool:
    return new.severity == "critical" and old.severity == "warning"
