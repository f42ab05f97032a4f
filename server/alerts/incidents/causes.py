"""The causal order: where in a training step a finding is made, and what explains what.

Within one step, a value goes bad upstream and the damage flows down::

    inputs → forward (modules, ops, watched tensors, denominators) → loss components → raw loss
    → the trainer's loss guard → the loss used → gradients → the applied (clipped) gradient
    → the update → learning

so of the findings that open together, the one made earliest in this order is the root and the
others are its evidence. Across steps, an open incident takes later findings of the rules its
evidence *explains* (each rule's ``explains`` in ``alerts.registry``): a clip that zeroes the
loss explains the stall and the missing learning, a non-finite value explains everything that
goes non-finite after it. Across ranks the same order holds: a NaN made in rank 1's forward
and all-reduced into rank 0's gradients in the same step is rank 1's.
"""

from __future__ import annotations

from collections.abc import Iterable

from trainvitals.protocol.series import parse_series
from trainvitals.server.alerts.incidents.model import Evidence
from trainvitals.server.alerts.registry import explains

__all__ = ["STAGES", "explained_by", "order_key", "stage_of"]

STAGES = ("input", "forward", "loss", "guard", "used", "backward", "applied", "update", "other")
_AT = {name: i for i, name in enumerate(STAGES)}
_TOP = {"loss": "loss", "loss_used": "used", "grad_norm": "backward",
        "grad_norm_post": "applied", "lr": "other"}
_RULE = {"clip": "guard", "spike": "loss", "grad_explosion": "backward", "headroom": "forward",
         "amp": "backward",
         "no_learning": "update", "module_learning": "update"}


def stage_of(rule: str, series: str, origin_stage: object = None) -> int:
    """How early in a step the finding of ``rule`` on ``series`` is made (index in STAGES)."""
    if series == "origin":
        return _AT["input"] if origin_stage == "input" else _AT[
            "backward" if origin_stage == "backward" else "forward"]
    if rule == "normalisation":  # a sample without valid pixels is a property of the input
        return _AT["input"] if series.endswith("/valid_zero") else _AT["forward"]
    if rule in _RULE:
        return _AT[_RULE[rule]]
    parsed = parse_series(series)
    if parsed.kind == "top":
        return _AT[_TOP[series]]
    if parsed.kind == "tensor":
        return _AT["forward"]
    if parsed.kind == "component":
        return _AT["loss"]
    return _AT["other"]


def order_key(evidence: Evidence) -> tuple[int, int, int]:
    """Earlier step first, then earlier in the step, then the lower rank."""
    stage = stage_of(evidence.rule, evidence.series, evidence.details.get("origin_stage"))
    return (evidence.first_step, stage, evidence.rank)


def explained_by(rule: str, evidence: Iterable[Evidence]) -> bool:
    """Whether a new finding of ``rule`` follows from what ``evidence`` already holds."""
    return any(explains(e.rule, rule) for e in evidence)
