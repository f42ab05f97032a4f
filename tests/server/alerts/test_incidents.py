"""Incidents over plain step records: one incident per cause, at its onset, saying why."""

from __future__ import annotations

import math
import random
from typing import Any

from trainvitals.protocol import ClipEvent, NonFiniteOrigin, Step, TensorStats
from trainvitals.server.alerts import AlertConfig, AlertEngine
from trainvitals.server.alerts.incidents import Incident, IncidentChange, IncidentEngine
from trainvitals.server.alerts.incidents.remedies import REMEDIES

NAN, INF = math.nan, math.inf


class Pipeline:
    """The alert engine and the incident engine, fed as the writer feeds them."""

    def __init__(self, **config: Any) -> None:
        self.alerts = AlertEngine(AlertConfig(**config))
        self.incidents = IncidentEngine()
        self.changes: list[IncidentChange] = []
        self.seq: dict[int, int] = {}

    def feed(self, step: int, rank: int = 0, **fields: Any) -> list[IncidentChange]:
        seq = self.seq[rank] = self.seq.get(rank, 0) + 1
        record = Step(run="r", session=f"s{rank}", seq=seq, step=step, rank=rank, **fields)
        out = self.incidents.observe(record, self.alerts.observe(record))
        self.changes += out
        return out

    def all(self) -> list[Incident]:
        """The latest snapshot of every incident, by number."""
        latest = {c.incident.number: c.incident for c in self.changes}
        return [latest[n] for n in sorted(latest)]

    def opened(self) -> list[Incident]:
        return [c.incident for c in self.changes if c.kind == "opened"]


def healthy(p: Pipeline, steps: range, *, lr: float = 1e-3, seed: int = 0, **extra: Any) -> None:
    rng = random.Random(seed)
    for n in steps:
        points, normal = 0.4 + 0.02 * rng.random(), 0.1 + 0.01 * rng.random()
        p.feed(n, loss=points + normal, loss_used=points + normal, lr=lr,
               grad_norm=1.0 + 0.3 * rng.random(), grad_norm_post=1.0,
               components={"points": points, "normal": normal}, **extra)


def stats(mx: float, *, inf: int = 0, nan: int = 0, dtype: str = "float32",
          headroom: float | None = None) -> TensorStats:
    return TensorStats(count=64, nan=nan, posinf=inf, neginf=0, min=-1.0, max=mx, mean=0.5,
                       absmax=mx, dtype=dtype, headroom=headroom)


def test_one_nan_from_one_op_is_one_incident_naming_the_op_and_line() -> None:
    p = Pipeline()
    healthy(p, range(0, 122))
    origin = NonFiniteOrigin(step=122, kind="inf", stage="forward", module="model",
                             module_type="PointMapNet", op="exp",
                             source="/home/me/pi3/model.py:41 in forward",
                             param="model.head.weight")
    p.feed(122, loss=NAN, loss_used=NAN, grad_norm=NAN, grad_norm_post=NAN, lr=1e-3,
           components={"points": NAN, "normal": 0.1}, origin=origin,
           tensors={"depth_raw": stats(91.0), "local_points": stats(3.0, inf=12)},
           clip=ClipEvent(raw=NAN, threshold=10.0, action="passed", reason="nan"),
           scalars={"update/head": NAN})
    (incident,) = p.all()
    assert (incident.onset_step, incident.severity, incident.kind) == (122, "critical",
                                                                       "overflow")
    assert incident.headline.startswith(
        "exp at model.py:41 in PointMapNet.forward made Inf at step 122")
    assert incident.evidence[0].series == "origin"
    assert incident.evidence_count >= 8  # every series that went non-finite, the clip, …
    assert incident.remedy == REMEDIES["overflow"]
    p.feed(123, loss=NAN, loss_used=NAN, grad_norm=NAN, lr=1e-3)  # it goes on: no new alarm
    assert len(p.opened()) == 1


def test_the_silent_stall_is_one_critical_incident_at_its_first_step() -> None:
    p = Pipeline()
    healthy(p, range(0, 101))
    for n in range(101, 140):
        p.feed(n, loss=3.2e4, loss_used=0.0, grad_norm=0.0, grad_norm_post=0.0, lr=1e-3,
               components={"points": 3.2e4 - 0.1, "normal": 0.1},
               clip=ClipEvent(raw=3.2e4, threshold=10.0, action="zeroed",
                              reason="above_threshold"),
               scalars={"update/head": 0.0, "dead_grads/head": 4.0, "trainable/head": 4.0})
    (incident,) = p.all()
    assert (incident.onset_step, incident.opened_step, incident.kind) == (101, 101,
                                                                          "guard_stall")
    assert incident.severity == "critical" and incident.state == "open"
    assert "the loss guard zeroes the loss (raw 3.2e+04 > clip 10)" in incident.headline
    assert "gradients are exactly 0" in incident.headline
    assert "points" in incident.headline  # the component that made the jump
    rules = {e.rule for e in incident.evidence}
    assert {"stall", "clip", "spike", "no_learning"} <= rules


def test_a_nan_made_on_rank_1_and_all_reduced_into_rank_0_is_one_incident_of_rank_1() -> None:
    p = Pipeline()
    for rank in (0, 1):
        healthy(p, range(0, 20), rank=rank)
    p.feed(20, rank=0, loss=0.5, grad_norm=NAN, grad_norm_post=NAN)  # arrives first
    p.feed(20, rank=1, loss=NAN, grad_norm=NAN, grad_norm_post=NAN,
           components={"points": NAN})
    (incident,) = p.all()
    assert (incident.rank, incident.onset_step, incident.ranks) == (1, 20, [1, 0])
    assert incident.headline.startswith("Rank 1: ") and "reached rank 0" in incident.headline


def test_a_spike_right_after_the_lr_jumped_names_the_learning_rate() -> None:
    p = Pipeline()
    healthy(p, range(0, 50), lr=1e-4)
    p.feed(50, loss=0.5, loss_used=0.5, grad_norm=1.0, lr=3e-2,
           components={"points": 0.4, "normal": 0.1})
    p.feed(51, loss=48.0, loss_used=48.0, grad_norm=900.0, lr=1e-4,
           components={"points": 47.9, "normal": 0.1})
    healthy(p, range(52, 60), lr=1e-4)
    (incident,) = p.all()
    assert (incident.kind, incident.onset_step) == ("lr_spike", 51)
    assert "the learning rate jumped 0.0001 → 0.03 at step 50" in incident.headline


def test_a_one_step_spike_with_the_lr_unchanged_reads_as_one_bad_batch() -> None:
    p = Pipeline()
    healthy(p, range(0, 40))
    p.feed(40, loss=5.0e3, loss_used=5.0e3, grad_norm=1.1, lr=1e-3,
           components={"points": 5.0e3 - 0.1, "normal": 0.1})
    healthy(p, range(41, 50), seed=1)
    (incident,) = p.all()
    assert (incident.kind, incident.state, incident.onset_step) == ("bad_batch", "resolved", 40)
    assert "one bad batch" in incident.headline


def test_an_unrelated_later_cause_opens_its_own_incident() -> None:
    p = Pipeline()
    dead = {"trainable/head": 2.0, "dead_grads/head": 2.0, "update/head": 0.0,
            "trainable/body": 4.0, "dead_grads/body": 0.0, "update/body": 1e-3}
    healthy(p, range(0, 30), scalars=dead)
    p.feed(30, loss=NAN, loss_used=NAN, grad_norm=NAN, lr=1e-3, scalars=dead)
    first, second = p.all()
    assert (first.kind, first.onset_step) == ("dead_module", 0)
    assert "Module head gets no gradient" in first.headline
    assert (second.kind, second.onset_step) == ("nonfinite_loss", 30)


def test_an_overflow_risk_that_overflows_escalates_the_same_incident() -> None:
    p = Pipeline()
    for n in range(0, 8):  # float16 pre-activation: max 9.5 of its 11.09 from the start
        p.feed(n, loss=1.0, loss_used=1.0, grad_norm=1.0, lr=1e-3,
               tensors={"depth_raw": stats(9.5, dtype="float16", headroom=11.09 - 9.5)})
    assert [c.kind for c in p.changes][:1] == ["opened"]
    assert p.changes[0].incident.onset_step == 0
    p.feed(8, loss=INF, loss_used=INF, grad_norm=NAN, lr=1e-3,
           tensors={"depth_raw": stats(11.5, inf=3, dtype="float16", headroom=-0.41)})
    (incident,) = p.all()
    assert (incident.state, incident.severity, incident.kind) == ("escalated", "critical",
                                                                  "float16_overflow")
    assert (incident.onset_step, incident.escalated_step) == (0, 8)
    assert "depth_raw (float16)" in incident.headline


def test_healthy_noisy_runs_raise_nothing() -> None:
    p = Pipeline()
    rng = random.Random(7)
    for n in range(400):
        warm = min(1.0, (n + 1) / 100)  # a warm-up from ~0
        loss = 2.0 * math.exp(-n / 200) + 0.3 * rng.random()
        p.feed(n, loss=loss, loss_used=loss, lr=3e-4 * warm,
               grad_norm=math.exp(rng.gauss(0.0, 0.8)), grad_norm_post=1.0,
               components={"points": loss * 0.8, "normal": loss * 0.2},
               tensors={"depth_raw": stats(2.0 + rng.random(), headroom=86.0)})
    assert p.all() == []


def test_a_diagnosis_that_raises_keeps_the_engine_going() -> None:
    p = Pipeline()
    healthy(p, range(0, 5))
    bad = NonFiniteOrigin(step=5, kind="nan", stage="forward", module="m", op="exp",
                          source="no colon here")
    p.feed(5, loss=NAN, origin=bad)
    assert len(p.all()) == 1 and p.all()[0].headline


def test_a_rule_that_raises_is_counted_once_logged_and_the_others_go_on(caplog: Any) -> None:
    from trainvitals.server.alerts.registry import RULES
    from trainvitals.server.alerts.rule import Rule

    def broken(ctx: Any) -> list[Any]:
        raise ZeroDivisionError("odd values")

    engine = AlertEngine(rules=(Rule("broken", broken, "warning", "never"), *RULES))
    for n in range(3):
        changes = engine.observe(Step(run="r", session="s", seq=n + 1, step=n, loss=NAN))
        assert [c.alert.rule for c in changes] == ["nonfinite"]
    assert engine.rule_errors == {"broken": 3}
    assert sum("'broken' failed" in r.getMessage() for r in caplog.records) == 1


def test_the_headline_keeps_the_words_of_the_onset_while_the_evidence_changes() -> None:
    """A loss that went NaN and then -Inf went NaN: the headline reads as at the onset, not
    as the latest value of its evidence."""
    p = Pipeline()
    healthy(p, range(0, 20))
    p.feed(20, loss=NAN, loss_used=NAN, grad_norm=1.0, lr=1e-3)
    first = p.all()[0].headline
    for n in range(21, 24):
        p.feed(n, loss=-INF, loss_used=-INF, grad_norm=1.0, lr=1e-3)
    (incident,) = p.all()
    assert "the loss went NaN at step 20" in first
    assert incident.headline == first, incident.headline


def test_nonsense_micro_batch_scalars_are_ignored_not_raised() -> None:
    """A sender's numbers can be anything: an infinite micro-batch count must not break the
    engine (it would have failed a commit whose records were already stored)."""
    p = Pipeline()
    healthy(p, range(0, 10))
    for first, count in ((0.0, INF), (NAN, 4.0), (5.0, 4.0), (-INF, 2.0), (1e300, 1e301)):
        p.feed(10, loss=NAN, loss_used=NAN, grad_norm=1.0, lr=1e-3,
               scalars={"micro/first_nonfinite": first, "micro/batches": count})
    (incident,) = p.all()
    assert "micro-batch" not in incident.headline
