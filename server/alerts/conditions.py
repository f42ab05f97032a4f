"""Conditions: trouble of the server itself, or of one trainer's delivery — incidents too.

Incidents (``alerts.incidents``) are judged from the training signal, step by step. Some
trouble is not in that signal: the disk is full, the database does not answer, the replica
relay lags, a trainer's spool keeps growing or it drops records. Those are *conditions*. The
server measures them (``ingest.readiness``, ``ingest.deliveries``); this board opens,
escalates, updates and resolves them the way incidents open, escalate and resolve, and the
sinks deliver them with the incident's JSON shape plus ``scope``: ``server`` (the whole
server: shown as a banner) or ``run`` (one run: shown on it). docs/operations.md lists every
condition with its threshold.

Pure: the caller passes the time and what it measured; nothing here measures anything.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Literal

from trainvitals.server.alerts.model import Details, Severity

__all__ = ["KINDS", "Condition", "ConditionChange", "Conditions", "Reading", "Scope"]

Scope = Literal["server", "run"]
ConditionState = Literal["open", "escalated", "resolved"]
ChangeKind = Literal["opened", "escalated", "updated", "resolved"]
Key = tuple[Scope, str, str]  # (scope, run — "" for the server, kind)
_RANK = {"warning": 0, "critical": 1}

# Every kind, its scope and its remedy (one line, as for incidents).
KINDS: dict[str, tuple[Scope, str]] = {
    "storage_full": ("server", "free space on the data directory's disk: delete old runs with "
                     "retain_days / retain_bytes, or move --data-dir to a larger disk"),
    "database_unreachable": ("server", "check that the database is up and reachable "
                             "(PostgreSQL: server, network, credentials; SQLite: the data "
                             "directory is mounted and readable)"),
    "commits_failing": ("server", "read the server log for the error; for 'database is "
                        "locked', stop the other process that writes the SQLite file"),
    "replica_lagging": ("server", "check this replica's connections to PostgreSQL; browsers "
                        "on the other replicas reload (resync) until it catches up"),
    "spool_backlog": ("run", "the trainer keeps what the server has not stored in its spool "
                      "and sends it when it can: fix the server conditions first; after the "
                      "run, `trainvitals sync` uploads what is left"),
    "records_dropped": ("run", "the plugin's queue or spool was full: give it more room "
                        "(Monitor(spool_bytes=...)) or fix what keeps the server from storing; "
                        "dropped records are lost"),
}


@dataclass(frozen=True, slots=True)
class Reading:
    """What a measurement says now about one condition that holds."""

    severity: Severity
    headline: str
    facts: Details = field(default_factory=dict)
    ranks: tuple[int, ...] = ()  # run scope: the ranks it concerns, the worst first
    step: int | None = None  # run scope: the run's latest step the server has seen


@dataclass(frozen=True, slots=True)
class Condition:
    """One condition, as it stands (frozen; replaced on every change, like ``Incident``).

    ``number`` counts the conditions of this server process from 1 (conditions live in
    memory: after a restart they are measured again). Times are the server's clock (Unix
    seconds); steps, for ``run`` conditions, are the run's latest step the server had seen.
    """

    scope: Scope
    run: str
    kind: str
    number: int
    severity: Severity
    state: ConditionState
    headline: str
    remedy: str
    opened_at: float
    last_at: float
    resolved_at: float | None = None
    escalated_at: float | None = None
    ranks: tuple[int, ...] = ()
    opened_step: int | None = None
    last_step: int | None = None
    resolved_step: int | None = None
    facts: Details = field(default_factory=dict)

    @property
    def key(self) -> Key:
        return (self.scope, self.run, self.kind)

    @property
    def id(self) -> str:
        """Stable while the server runs: ``server:storage_full#3``, ``run:spool_backlog#4``."""
        return f"{self.scope}:{self.kind}#{self.number}"


@dataclass(frozen=True, slots=True)
class ConditionChange:
    """A condition opened, escalated (its severity rose), changed, or resolved."""

    kind: ChangeKind
    condition: Condition


class Conditions:
    """The open conditions and the latest resolved ones; see the module docstring.

    An open condition whose numbers change (free bytes, a backlog) is kept up to date at once,
    but announced as ``updated`` at most once per ``update_every`` seconds, so a condition
    measured on every frame does not flood the browsers. Severity changes are announced at
    once. Not thread-safe: use it from one task.
    """

    def __init__(self, *, keep_resolved: int = 200, update_every: float = 5.0) -> None:
        self._open: dict[Key, Condition] = {}
        self._resolved: deque[Condition] = deque(maxlen=keep_resolved)
        self._announced: dict[Key, float] = {}
        self._count = 0
        self._update_every = update_every

    def hold(self, scope: Scope, run: str, kind: str, reading: Reading,
             now: float) -> ConditionChange | None:
        """``kind`` holds now as ``reading`` says; the change to announce, if any."""
        if KINDS[kind][0] != scope:
            raise ValueError(f"{kind} is a {KINDS[kind][0]} condition, not a {scope} one")
        key: Key = (scope, run, kind)
        before = self._open.get(key)
        if before is None:
            self._count += 1
            after = Condition(scope, run, kind, self._count, reading.severity, "open",
                              reading.headline, KINDS[kind][1], now, now, ranks=reading.ranks,
                              opened_step=reading.step, last_step=reading.step,
                              facts=dict(reading.facts))
            return self._announce(ConditionChange("opened", after), now)
        after = replace(before, severity=reading.severity, headline=reading.headline,
                        facts=dict(reading.facts), ranks=reading.ranks, last_at=now,
                        last_step=reading.step if reading.step is not None else before.last_step)
        rose = _RANK[reading.severity] - _RANK[before.severity]
        if rose > 0:
            after = replace(after, state="escalated", escalated_at=now)
            return self._announce(ConditionChange("escalated", after), now)
        if rose < 0:  # back to a warning: say so at once (the banner changes colour)
            return self._announce(ConditionChange("updated", replace(after, state="open")), now)
        self._open[key] = after
        news = (after.headline, after.facts, after.ranks) != (
            before.headline, before.facts, before.ranks)
        if news and now - self._announced.get(key, -float("inf")) >= self._update_every:
            return self._announce(ConditionChange("updated", after), now)
        return None

    def clear(self, scope: Scope, run: str, kind: str, now: float,
              step: int | None = None) -> ConditionChange | None:
        """``kind`` no longer holds; the ``resolved`` change if it was open."""
        key: Key = (scope, run, kind)
        before = self._open.pop(key, None)
        if before is None:
            return None
        self._announced.pop(key, None)
        after = replace(before, state="resolved", resolved_at=now, last_at=now,
                        resolved_step=step if step is not None else before.last_step)
        self._resolved.appendleft(after)
        return ConditionChange("resolved", after)

    def get(self, scope: Scope, run: str, kind: str) -> Condition | None:
        """The open condition of that key, if any."""
        return self._open.get((scope, run, kind))

    def open(self, scope: Scope | None = None, run: str | None = None) -> list[Condition]:
        """Open conditions, critical first, then oldest first."""
        found = _matching(self._open.values(), scope, run)
        return sorted(found, key=lambda c: (-_RANK[c.severity], c.opened_at, c.number))

    def resolved(self, scope: Scope | None = None, run: str | None = None) -> list[Condition]:
        """The latest resolved conditions (at most ``keep_resolved``), newest first."""
        return _matching(self._resolved, scope, run)

    def forget(self, run: str) -> None:
        """Drop a deleted run's conditions without announcing anything."""
        for key in [k for k in self._open if k[0] == "run" and k[1] == run]:
            del self._open[key]
            self._announced.pop(key, None)
        kept = [c for c in self._resolved if not (c.scope == "run" and c.run == run)]
        self._resolved.clear()
        self._resolved.extend(kept)

    def _announce(self, change: ConditionChange, now: float) -> ConditionChange:
        condition = change.condition
        self._open[condition.key] = condition
        self._announced[condition.key] = now
        return change


def _matching(conditions: Iterable[Condition], scope: Scope | None,
              run: str | None) -> list[Condition]:
    # list() first: one C-level copy, so a reader on another thread (/metrics, REST) never
    # sees the dict change size under its loop
    return [c for c in list(conditions)
            if (scope is None or c.scope == scope) and (run is None or c.run == run)]
