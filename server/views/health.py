"""A run's health in plain words, for the top of its page and its report.

``gather`` reads the few facts it needs from the store (the run, its open alerts, two clip
events, the first and latest loss); ``summarize`` is a pure function of those facts, e.g.
"Loss clipped to 0 on the last 312 steps; gradients are 0; the model is not learning. First
clip at step 1,204: raw loss 3.2e4 > clip 10." ``live_status`` adds the ``silent`` status:
a run still marked running that sent nothing for ``silent_after_s`` seconds.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from trainvitals.server.alerts import Alert
from trainvitals.server.alerts.text import count, step
from trainvitals.server.store import ClipRow, RunRow, Store

__all__ = ["Health", "HealthFacts", "gather", "live_status", "summarize"]

Level = Literal["ok", "warning", "critical"]


def live_status(run: RunRow, now: float, silent_after_s: float) -> str:
    """``silent`` for a running run whose latest record is older than ``silent_after_s``.

    ``run.updated`` is the trainer's clock and ``now`` the server's: on one cluster they agree
    well enough for a threshold of a minute.
    """
    if run.status == "running" and now - run.updated > silent_after_s:
        return "silent"
    return run.status


@dataclass(frozen=True)
class HealthFacts:
    """What the summary is made of; every field comes straight from the store."""

    status: str  # running | finished | crashed | silent
    reason: str = ""
    steps: int = 0
    last_step: int | None = None
    silent_for: float | None = None  # seconds since the latest record, when silent
    open_alerts: Sequence[Alert] = ()
    stall_clip: ClipRow | None = None  # the clip event at the step the loss stall began
    first_clip: ClipRow | None = None  # the run's first clip event
    loss_first: float | None = None
    loss_last: float | None = None
    grad_last: float | None = None


@dataclass(frozen=True)
class Health:
    """The verdict: ``level`` for colour, ``sentences`` to read, ``summary`` them joined."""

    level: Level
    sentences: list[str] = field(default_factory=list)

    @property
    def summary(self) -> str:
        """All sentences as one paragraph."""
        return " ".join(self.sentences)


def summarize(f: HealthFacts) -> Health:
    """The plain-words verdict on a run, worst news first."""
    alerts = {(a.rule, a.series): a for a in sorted(f.open_alerts, key=lambda a: -a.rank)}
    sentences = [*_crash(f), *_stall(f, alerts), *_nonfinite(f.open_alerts),
                 *_clips(f, alerts), *_others(f.open_alerts), *_silence(f)]
    if not sentences:
        sentences = [_healthy(f)]
    level: Level = "ok"
    if f.status == "silent" or f.open_alerts:
        level = "warning"
    if f.status == "crashed" or any(a.severity == "critical" for a in f.open_alerts):
        level = "critical"
    return Health(level, sentences)


def _crash(f: HealthFacts) -> list[str]:
    if f.status != "crashed":
        return []
    at = f" at step {step(f.last_step)}" if f.last_step is not None else ""
    return [f"The run crashed{at}" + (f": {f.reason.rstrip('.')}." if f.reason else ".")]


def _stall(f: HealthFacts, alerts: dict[tuple[str, str], Alert]) -> list[str]:
    loss, grad = alerts.get(("stall", "loss_used")), alerts.get(("stall", "grad_norm"))
    grad_zero = grad is not None or f.grad_last == 0.0
    if loss is not None:
        streak = int(loss.details.get("streak", loss.count))
        clip = f.stall_clip
        what = ("Loss clipped to 0" if clip is not None and clip.action == "zeroed"
                else "The backpropagated loss was 0")
        text = f"{what} on the last {count(streak)} steps"
        text += "; gradients are 0" if grad_zero else ""
        text += "; the model is not learning."
        if clip is not None:
            text += f" First clip at step {step(clip.step)}: {_guard(clip)}."
        return [text]
    if grad is not None:
        streak = int(grad.details.get("streak", grad.count))
        loss_now = f" while the loss is {num(f.loss_last)}" if f.loss_last is not None else ""
        return [f"The gradient norm was 0 on the last {count(streak)} steps{loss_now}; "
                "the model is not learning."]
    return []


def _nonfinite(open_alerts: Sequence[Alert]) -> list[str]:
    found = sorted((a for a in open_alerts if a.rule == "nonfinite"),
                   key=lambda a: (a.first_step, a.series))
    if not found:
        return []
    names = list(dict.fromkeys(a.series for a in found))
    shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    return [f"NaN/Inf in {shown} since step {step(found[0].first_step)}."]


def _clips(f: HealthFacts, alerts: dict[tuple[str, str], Alert]) -> list[str]:
    clip = alerts.get(("clip", "loss"))
    if clip is None or ("stall", "loss_used") in alerts:
        return []  # a loss stall already said it
    n, window = clip.details.get("count"), clip.details.get("window")
    text = (f"The loss guard fired on {count(int(n))} of the last {count(int(window))} steps"
            if isinstance(n, int) and isinstance(window, int) else "The loss guard fired")
    if f.first_clip is not None:
        text += f"; first at step {step(f.first_clip.step)}: {_guard(f.first_clip)}"
    return [text + "."]


def _others(open_alerts: Sequence[Alert]) -> list[str]:
    return [a.message for a in open_alerts if a.rule not in ("stall", "nonfinite", "clip")]


def _silence(f: HealthFacts) -> list[str]:
    if f.status != "silent":
        return []
    since = f" for {duration(f.silent_for)}" if f.silent_for is not None else ""
    return [f"No data{since}: the trainer may be stuck, or gone without saying so."]


def _healthy(f: HealthFacts) -> str:
    if f.steps == 0:
        return "No steps yet."
    ended = {"finished": "Finished", "running": "Healthy"}.get(f.status, "Healthy")
    trend = ""
    if f.loss_first is not None and f.loss_last is not None:
        trend = f": loss {num(f.loss_first)} → {num(f.loss_last)} over {count(f.steps)} steps"
    else:
        trend = f" after {count(f.steps)} steps"
    return f"{ended}{trend}; no open alerts."


def _guard(clip: ClipRow) -> str:
    if clip.reason == "above_threshold":
        return f"raw loss {num(clip.raw)} > clip {num(clip.threshold)}"
    return f"raw loss {num(clip.raw)} ({clip.reason}), action {clip.action}"


def num(x: float | None) -> str:
    """A value to 3 significant digits, short exponents (3.2e4), NaN/+Inf/-Inf spelled out."""
    if x is None:
        return "—"
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "+Inf" if x > 0 else "-Inf"
    return re.sub(r"e([+-])0*(\d)", lambda m: f"e{m[1].lstrip('+')}{m[2]}", f"{x:.3g}")


def duration(seconds: float) -> str:
    """``45 s``, ``12 min``, ``3 h 5 min``, ``4 days``."""
    s = int(seconds)
    if s < 120:
        return f"{s} s"
    if s < 7200:
        return f"{s // 60} min"
    if s < 172_800:
        return f"{s // 3600} h {s % 3600 // 60} min"
    return f"{s // 86_400} days"


def gather(store: Store, run: RunRow, now: float, silent_after_s: float) -> HealthFacts:
    """The facts ``summarize`` needs about ``run`` (a handful of indexed queries)."""
    status = live_status(run, now, silent_after_s)
    open_alerts = store.alerts(run=run.name, state="open")
    rank = min(run.ranks, default=0)
    return HealthFacts(
        status=status, reason=run.reason, steps=run.steps, last_step=run.last_step,
        silent_for=now - run.updated if status == "silent" else None,
        open_alerts=open_alerts, stall_clip=_stall_clip(store, run.id, open_alerts),
        first_clip=next(iter(store.clips(run.id, limit=1)), None),
        loss_first=_edge_value(store, run.id, "loss", rank, None),
        loss_last=_edge_value(store, run.id, "loss", rank, run.last_step),
        grad_last=_edge_value(store, run.id, "grad_norm", rank, run.last_step))


def _stall_clip(store: Store, run_id: int, open_alerts: Sequence[Alert]) -> ClipRow | None:
    stall = next((a for a in open_alerts if (a.rule, a.series) == ("stall", "loss_used")), None)
    if stall is None:
        return None
    since = stall.details.get("since", stall.first_step)
    if not isinstance(since, int):
        return None
    clips = store.clips(run_id, start=since, end=since)
    return next((c for c in clips if c.rank == stall.rank), None)


def _edge_value(store: Store, run_id: int, name: str, rank: int,
                at: int | None) -> float | None:
    """The first value of a series (``at`` None), or its value at step ``at``."""
    found = store.series(run_id, name, rank=rank, start=at, end=at, limit=1)
    return found[0].values[0] if found and found[0].values else None
