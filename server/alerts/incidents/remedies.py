"""What to try, in one line, per kind of cause. Words and a link — never a silent fix.

The same table is in docs/alerts.md ("What to try"); a test holds the two together.
"""

from __future__ import annotations

__all__ = ["DOCS", "REMEDIES", "remedy_for"]

DOCS = "docs/alerts.md#what-to-try"
REMEDIES: dict[str, str] = {
    "overflow": "clamp the pre-activation before exp (exp(z.clamp(max=15))), or use softplus / "
                "predict log-depth (`trainvitals demo`'s softplus twin recovers from the same "
                "spike)",
    "float16_overflow": "compute this part in bfloat16 or float32, or scale the loss with a "
                        "GradScaler",
    "domain": "clamp the argument inside the op's domain (acos: [-1+ε, 1-ε]; log/sqrt: "
              "clamp_min(ε))",
    "division": "mask samples with nothing to average, or clamp_min(eps) the denominator",
    "nonfinite_op": "guard the op's input range; the op and line are above",
    "nonfinite_module": "look at that module's forward; watch(model, op_trace=True) names the op",
    "nonfinite_backward": "look for sqrt/pow/norm at 0 or a division in the loss (their "
                          "gradients are Inf at 0)",
    "nonfinite_loss": "look at the loss for a log/division/mean over nothing; "
                      "watch(model, op_trace=True) and denominator() locate it",
    "nonfinite_tensor": "watch(model, op_trace=True) names the op; clamp or mask the values "
                        "feeding it",
    "bad_input": "check the data pipeline for NaN/Inf samples; skip or repair them",
    "guard_stall": "skip the step instead of multiplying the loss by 0, and log the raw loss",
    "detached_loss": "check that the loss reaches the parameters (no .detach(), no * 0.0 "
                     "guard)",
    "lr_spike": "check the scheduler (a warm-up or a step that multiplies the lr)",
    "loss_spike": "look at that step's batch and the component that jumped",
    "bad_batch": "filter or clip outlier samples in the data",
    "grad_explosion": "lower the learning rate or add warm-up; clipping hides the explosion "
                      "but does not cure it",
    "dead_module": "remove the .detach() or connect the branch to the loss",
    "not_optimised": "add the module's parameters to the optimizer (build it after the model "
                     "is complete)",
    "no_learning": "check the learning rate and that gradients reach the weights",
    "overflow_risk": "clamp the pre-activation or switch it to a wider dtype before it "
                     "overflows",
    "amp": "find the first non-finite value in the forward or the loss (watch(model)); no "
           "loss scale can fix those — or train this part in bfloat16",
    "threshold": "your own rule: see its series",
}


def remedy_for(kind: str) -> str:
    """The one-line remedy of ``kind`` ("" for a kind without one)."""
    return REMEDIES.get(kind, "")
