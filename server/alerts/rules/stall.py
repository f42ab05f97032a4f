"""The ``stall`` rule: nothing reaches the weights although the loss says there is work to do.

Two signatures, each on its own series:

* ``loss_used`` — the backpropagated loss is exactly 0, or the loss guard zeroed it;
* ``grad_norm`` — the pre-clip gradient norm is exactly 0 while the raw loss is positive and
  was not zeroed (a detached graph, a loss that reaches no trainable parameter).

A verdict at onset: when the step carries the exact signature — the raw loss is positive and
the pre-clip gradient norm is exactly 0 — the stall is raised at its first step. Otherwise (no
gradient norm reported) it takes ``stall_steps`` consecutive steps. An open stall is held by
any stalled step, so one passing batch in a stuck run does not resolve and reopen it.
"""

from __future__ import annotations

from collections.abc import Collection

from trainvitals.protocol import Step
from trainvitals.protocol.series import BACKWARD_FACTOR
from trainvitals.server.alerts import text
from trainvitals.server.alerts.memory import Streak
from trainvitals.server.alerts.model import Details, Finding
from trainvitals.server.alerts.rule import Rule, RuleContext
from trainvitals.server.alerts.rules.clip import guard_text

__all__ = ["RULE", "exact_stall", "stall"]


def exact_stall(step: Step) -> bool:
    """The step proves nothing was learned: raw loss > 0 and pre-clip gradient norm exactly 0."""
    return step.grad_norm == 0 and step.loss is not None and step.loss > 0


def stall(
    step: Step, loss_streak: Streak, grad_streak: Streak, k: int, open_series: Collection[str] = ()
) -> list[Finding]:
    """Critical findings for a zero backpropagated loss or a zero gradient (see the module)."""
    need = 1 if exact_stall(step) else k
    found: list[Finding] = []
    if loss_streak.length >= (1 if "loss_used" in open_series else need):
        found.append(_loss_stall(step, loss_streak, k))
    if grad_streak.length >= (1 if "grad_norm" in open_series else need):
        found.append(_grad_stall(step, grad_streak, k))
    return found


def _loss_stall(step: Step, streak: Streak, k: int) -> Finding:
    assert streak.start is not None  # a streak of length >= 1 has a start
    event = step.clip
    clipped = " (clipped)" if event is not None and event.action == "zeroed" else ""
    cause = guard_text(event) if event is not None else f"raw loss {_optional(step.loss)}"
    if event is None and step.scalars.get(BACKWARD_FACTOR) == 0:
        cause += " (the gradient reaching it was 0: it was multiplied by 0 before backward)"
    steps = ("at this step" if streak.length == 1 else
             f"for {text.count(streak.length)} consecutive steps since step "
             f"{text.step(streak.start)}")
    message = (
        f"Silent stall: the backpropagated loss was 0{clipped} {steps}; {cause}"
        f"{_grad(step)}. Gradients cannot flow."
    )
    details: Details = {"streak": streak.length, "since": streak.start, "stall_steps": k}
    if step.loss is not None:
        details["loss"] = step.loss
    if step.grad_norm is not None:
        details["grad_norm"] = step.grad_norm
    if BACKWARD_FACTOR in step.scalars:
        details["backward_factor"] = step.scalars[BACKWARD_FACTOR]
    if event is not None:
        details.update(raw=event.raw, threshold=event.threshold, action=event.action)
    return Finding("stall", "loss_used", "critical", message, details, streak.start)


def _grad_stall(step: Step, streak: Streak, k: int) -> Finding:
    assert streak.start is not None and step.loss is not None  # grad_stalled() requires a loss
    steps = ("at this step" if streak.length == 1 else
             f"for {text.count(streak.length)} consecutive steps since step "
             f"{text.step(streak.start)}")
    message = (
        f"Silent stall: the gradient norm before clipping was 0 {steps} while the raw loss was "
        f"{text.value(step.loss)} > 0. The loss does not reach any trainable parameter."
    )
    details: Details = {
        "streak": streak.length, "since": streak.start, "stall_steps": k, "loss": step.loss,
    }
    return Finding("stall", "grad_norm", "critical", message, details, streak.start)


def _grad(step: Step) -> str:
    if step.grad_norm is None:
        return ""
    return f"; pre-clip gradient norm {text.value(step.grad_norm)}"


def _optional(x: float | None) -> str:
    return "not reported" if x is None else text.value(x)


def _judge(ctx: RuleContext) -> list[Finding]:
    memory = ctx.memory
    return stall(ctx.step, memory.loss_streak, memory.grad_streak, ctx.config.stall_steps,
                 ctx.open_series)


RULE = Rule(
    "stall", _judge, severity="critical",
    summary="the backpropagated loss is 0 / zeroed, or the pre-clip gradient norm is 0 while "
            "the raw loss is > 0: at once when the gradient norm is exactly 0 (the exact "
            "signature), else after `stall_steps` steps",
    explains=frozenset({"stall", "clip", "no_learning", "module_learning", "spike"}),
)
