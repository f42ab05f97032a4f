"""From an incident's evidence to its diagnosis: what happened, why, in plain words and numbers.

A diagnosis has three parts: the *kind* of cause (the key of the remedies table), *what* went
wrong at the onset (the most precise fact the evidence holds: the op and line, else the module,
the denominator, the tensor and its dtype, the loss component, the guard, the gradients), and
*why* it may have happened (what changed just before: the learning rate jumped, one loss
component made the jump). Each ``_what_*`` function reads the evidence and answers or passes;
the first that answers speaks, in the order of precision below. When little is known the
headline says what is known and what to switch on to learn more.

Pure: evidence and the rank's recent steps in, words out.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from trainvitals.protocol.series import parse_series
from trainvitals.server.alerts import text
from trainvitals.server.alerts.incidents.context import StepFacts
from trainvitals.server.alerts.incidents.model import Evidence
from trainvitals.server.alerts.incidents.remedies import remedy_for
from trainvitals.server.alerts.model import Details

__all__ = ["Diagnosis", "diagnose"]

OVERFLOW_OPS = {"exp", "exp2", "expm1", "pow", "square", "cosh", "sinh", "ldexp", "softplus"}
DOMAIN_OPS = {"log", "log2", "log10", "log1p", "sqrt", "rsqrt", "acos", "asin", "atanh",
              "acosh", "arccos", "arcsin", "arctanh", "lgamma", "digamma", "polygamma"}
DIVISION_OPS = {"div", "truediv", "rtruediv", "true_divide", "divide", "reciprocal",
                "floor_divide", "remainder", "fmod", "mean", "nanmean"}
FLOAT16_LIMIT = 11.09  # ln(65504): the headroom margin of a float16 tensor
LR_JUMP = 10.0  # a change of the learning rate by this factor or more explains a spike
LR_LOOKBACK = 3  # steps before the onset in which such a change explains it
TRACE_HINT = "switch on watch(model, op_trace=True) to learn the op and line"
BACKWARD_HINT = ("an op whose gradient is infinite where the forward is not, such as sqrt, "
                 "pow or a norm at 0")


@dataclass(frozen=True, slots=True)
class Diagnosis:
    """``kind`` (see ``remedies``), the ``headline`` and ``remedy`` shown, and the facts."""

    kind: str
    headline: str
    remedy: str
    facts: Details = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class _What:
    kind: str
    text: str
    facts: Details = field(default_factory=dict)


Reader = Callable[[Sequence[Evidence], Sequence[StepFacts]], "_What | None"]


def diagnose(evidence: Sequence[Evidence], history: Sequence[StepFacts],
             onset: int, rank: int, world: int, known_why: str | None = None,
             escalated: bool = False, known_what: str | None = None,
             known_kind: str | None = None) -> Diagnosis:
    """The diagnosis of an incident whose ``evidence`` is root first; ``history`` holds the
    root rank's recent steps (oldest first), ``world`` the number of ranks seen on the run.
    ``known_why`` is what the last diagnosis of the same onset found before it (kept: the steps
    before the onset leave ``history``)."""
    at_onset = [e for e in evidence if e.first_step <= onset] or list(evidence)
    what: _What = _read(at_onset, history)
    first_kind = what.kind
    if known_what and (escalated or known_kind == what.kind):
        # the words found at the onset, not as its evidence reads now (a tensor that went NaN
        # and later -Inf went NaN); a better reading (an origin that arrived since) replaces them
        what = _What(what.kind, known_what, what.facts)
    first_what = what.text
    then = _then(evidence, history, onset, what, escalated)
    if then is not None:
        what = _What(then.kind, f"{what.text}; then {then.text}", {**what.facts, **then.facts})
    # What changed before the onset is read while the onset and its predecessors are still
    # in the history, once; afterwards the words found then are kept.
    why = known_why if known_why is not None else _why(evidence, history, onset, what.kind)
    kind = "lr_spike" if why.startswith("the learning rate") and what.kind in _LR_EFFECTS \
        else what.kind
    where = f"Rank {rank}: " if world > 1 else ""
    headline = f"{where}{what.text}{_micro_batch(history, onset)}" + (f" — {why}" if why else "")
    headline += "" if headline.endswith(("?", ".")) else "."
    spread = sorted({e.rank for e in evidence} - {rank})
    if spread:
        headline += f" It reached rank{'s' if len(spread) > 1 else ''} " \
                    f"{', '.join(map(str, spread))} too."
    return Diagnosis(kind, headline, remedy_for(kind),
                     {**what.facts, "onset": onset, "why": why, "what": first_what,
                      "what_kind": first_kind})


def _micro_batch(history: Sequence[StepFacts], onset: int) -> str:
    """Which micro-batch of the onset step went non-finite first, when it accumulated."""
    micro = next((f.micro for f in history if f.step == onset), None)
    return "" if micro is None else f" (in micro-batch {micro[0] + 1} of {micro[1]})"


# --------------------------------------------------------------------------- what happened


def _read(evidence: Sequence[Evidence], history: Sequence[StepFacts]) -> _What:
    """What the first reader that understands ``evidence`` says (the last always answers)."""
    return next(w for reader in READERS if (w := reader(evidence, history)) is not None)


def _then(evidence: Sequence[Evidence], history: Sequence[StepFacts], onset: int,
          what: _What, escalated: bool) -> _What | None:
    """What followed the onset when it is news: a warning that became critical (an overflow
    risk that overflowed), or the op a forward re-run found a step after the onset."""
    later = [e for e in evidence if e.first_step > onset]
    critical = [e for e in later if e.severity == "critical"]
    if escalated and critical:
        first = min(e.first_step for e in critical)
        found = _read([e for e in evidence if e.first_step <= onset or e.first_step == first],
                      history)
        return found if found.text != what.text else None
    ops = [e for e in later if e.series == "origin" and "origin_op" in e.details]
    op = _what_op(ops, history) if ops and "op" not in what.facts else None
    return None if op is None else _What(what.kind, op.text, op.facts)


def _what_op(evidence: Sequence[Evidence], history: Sequence[StepFacts]) -> _What | None:
    for e in evidence:
        op = e.details.get("origin_op")
        if e.series != "origin" or not isinstance(op, str):
            continue
        made = _made(e.details)
        where = _source(e.details)
        kind = ("domain" if op in DOMAIN_OPS else "division" if op in DIVISION_OPS else
                "overflow" if op in OVERFLOW_OPS else "nonfinite_op")
        if kind != "domain" and _float16(evidence):
            kind = "float16_overflow"
            made += " (float16 overflows above 65,504)"
        return _What(kind, f"{op}{where} made {made} at step {_step(e.details)}",
                     {"op": op, "source": str(e.details.get("origin_source", ""))})
    return None


def _what_origin(evidence: Sequence[Evidence], history: Sequence[StepFacts]) -> _What | None:
    for e in evidence:
        if e.series != "origin":
            continue
        d, at = e.details, _step(e.details)
        module = d.get("origin_module")
        kind_of = f" ({d['origin_module_type']})" if d.get("origin_module_type") else ""
        if d.get("origin_stage") == "input":
            return _What("bad_input", f"the inputs of {module}{kind_of} were already "
                         f"{_made(d)} at step {at} (the data, not the model)",
                         {"module": str(module)})
        if d.get("origin_stage") == "backward" or module is None:
            continue  # the backward's own reader speaks, after the loss's
        kind = "float16_overflow" if _float16(evidence) else "nonfinite_module"
        return _What(kind, f"{module}{kind_of} first made {_made(d)} at step {at} "
                     f"({TRACE_HINT})", {"module": str(module)})
    return None


def _what_backward(evidence: Sequence[Evidence],
                   history: Sequence[StepFacts]) -> _What | None:
    for e in evidence:
        d = e.details
        if e.series == "origin" and (d.get("origin_stage") == "backward"
                                     or d.get("origin_module") is None):
            param = d.get("origin_param")
            first = f"; the first bad gradient: {param}" if param else ""
            return _What("nonfinite_backward", f"only the backward pass went {_made(d)} at step "
                         f"{_step(d)}: the forward was finite{first} ({BACKWARD_HINT})",
                         {"param": str(param or "")})
    return None


def _what_denominator(evidence: Sequence[Evidence],
                      history: Sequence[StepFacts]) -> _What | None:
    for e in evidence:
        if e.rule != "normalisation":
            continue
        name = e.series.removeprefix("scalar/normalisation/").rpartition("/")[0]
        if e.series.endswith("/valid_zero"):
            n = int(float(e.details.get("samples", 1)))
            return _What("division", f"the division by {name}: {text.count(n)} "
                         f"sample{'s' if n != 1 else ''} had no valid pixel at step "
                         f"{text.step(e.first_step)}, a mean over none is 0/0",
                         {"denominator": name})
        return _What("division", f"the division by {name}: it fell to "
                     f"{_num(e.details.get('value'))} (below ε {_num(e.details.get('eps'))}) "
                     f"at step {text.step(e.first_step)}", {"denominator": name})
    return None


def _what_overflowed_tensor(evidence: Sequence[Evidence],
                            history: Sequence[StepFacts]) -> _What | None:
    """A tensor logged with ``feeds_exp`` whose max passed (or neared) exp's limit, when
    something went non-finite or stalled behind it."""
    harm = [e.first_step for e in evidence if e.rule in ("nonfinite", "stall", "clip", "spike")]
    if not harm:
        return None
    for e in evidence:
        if e.rule != "headroom":
            continue
        name = parse_series(e.series).name
        limit, peak = e.details.get("limit"), _peak_max(evidence, name, e)
        dtype = _dtype(evidence, name, limit)
        kind = "float16_overflow" if dtype == "float16" else "overflow"
        passed = isinstance(peak, float) and isinstance(limit, float) and peak >= limit
        verb = "passed" if passed else "came within reach of"
        return _What(kind, f"{name} ({dtype}) max {_num(peak)} {verb} exp's overflow at "
                     f"{_num(limit)} at step {text.step(min(harm))}",
                     {"tensor": name, "dtype": dtype})
    return None


def _what_nonfinite_tensor(evidence: Sequence[Evidence],
                           history: Sequence[StepFacts]) -> _What | None:
    for e in evidence:
        if e.rule != "nonfinite" or parse_series(e.series).kind != "other" \
                or not e.series.startswith("tensor/"):
            continue
        name, d = e.series.removeprefix("tensor/"), e.details
        dtype = str(d.get("dtype") or "")
        kind = "float16_overflow" if dtype == "float16" else "nonfinite_tensor"
        counts = ", ".join(f"{text.count(int(float(d[k])))} {label}" for k, label in
                           (("nan", "NaN"), ("posinf", "+Inf"), ("neginf", "-Inf"))
                           if float(d.get(k, 0) or 0) > 0)
        made = f"{name} ({dtype})" if dtype else name
        return _What(kind, f"{made} went non-finite at step {text.step(e.first_step)} "
                     f"({counts}; {TRACE_HINT})", {"tensor": name, "dtype": dtype})
    return None


def _what_nonfinite_loss(evidence: Sequence[Evidence],
                         history: Sequence[StepFacts]) -> _What | None:
    for e in evidence:
        if e.rule != "nonfinite" or parse_series(e.series).kind not in ("top", "component"):
            continue
        if e.series in ("grad_norm", "grad_norm_post"):
            if any(x.series == "origin" for x in evidence):
                return None  # the watch knows the first bad parameter: its reader speaks
            return _What("nonfinite_backward", f"the gradients went {_value(e)} at step "
                         f"{text.step(e.first_step)} while the loss was finite ({BACKWARD_HINT}"
                         f"; watch(model) names the first bad parameter)")
        components = [parse_series(x.series).name for x in evidence
                      if x.rule == "nonfinite" and x.series.startswith("loss/")]
        part = f" (component {', '.join(components)})" if components else ""
        return _What("nonfinite_loss", f"the loss went {_value(e)} at step "
                     f"{text.step(e.first_step)}{part}; the logged tensors stayed finite, so "
                     f"the loss computation made it ({TRACE_HINT})")
    return None


def _what_stall(evidence: Sequence[Evidence], history: Sequence[StepFacts]) -> _What | None:
    for e in evidence:
        if e.rule != "stall":
            continue
        since, d = text.step(e.first_step), e.details
        if d.get("action") == "zeroed":
            return _What("guard_stall", f"silent stall from step {since}: the loss guard zeroes "
                         f"the loss (raw {_num(d.get('raw'))} > clip {_num(d.get('threshold'))})"
                         f" and gradients are {_grad(d)}", {"raw": d.get("raw", math.nan)})
        if e.series == "loss_used":
            return _What("guard_stall", f"silent stall from step {since}: the loss reaching "
                         f"backward is 0 while the raw loss is {_num(d.get('loss'))} — "
                         f"something like `if loss > clip: loss = loss * 0.0` zeroes it; "
                         f"gradients are {_grad(d)}", {"raw": d.get("loss", math.nan)})
        return _What("detached_loss", f"silent stall from step {since}: the pre-clip gradient "
                     f"norm is exactly 0 while the raw loss is {_num(d.get('loss'))} > 0 — the "
                     f"loss is zeroed before backward or reaches no trainable parameter")
    return None


def _what_explosion(evidence: Sequence[Evidence],
                    history: Sequence[StepFacts]) -> _What | None:
    for e in evidence:
        if e.rule == "grad_explosion":
            d = e.details
            post = d.get("grad_norm_post")
            held = (f"; clipping held the applied norm to {_num(post)}, hiding it"
                    if isinstance(post, float) and post < 0.5 * float(d["grad_norm"]) else "")
            return _What("grad_explosion", f"the gradients exploded at step "
                         f"{text.step(e.first_step)}: pre-clip norm {_num(d.get('grad_norm'))}, "
                         f"×{_num(d.get('factor'))} its median {_num(d.get('median'))}{held}")
    return None


def _what_spike(evidence: Sequence[Evidence], history: Sequence[StepFacts]) -> _What | None:
    for e in evidence:
        if e.rule != "spike":
            continue
        d = e.details
        return _What("loss_spike", f"the raw loss spiked at step {text.step(e.first_step)}: "
                     f"{_num(d.get('median'))} → {_num(d.get('loss'))}")
    return None


def _what_one_bad_step(evidence: Sequence[Evidence],
                       history: Sequence[StepFacts]) -> _What | None:
    """A loss spike that held one step and was gone the next: the shape of one bad batch."""
    for e in evidence:
        if e.rule == "spike" and e.state == "resolved" and e.count == 1:
            d = e.details
            return _What("bad_batch", f"the raw loss spiked for one step at step "
                         f"{text.step(e.first_step)} ({_num(d.get('median'))} → "
                         f"{_num(d.get('loss'))}) and was back to normal the next: one bad "
                         "batch?")
    return None


def _what_module(evidence: Sequence[Evidence], history: Sequence[StepFacts]) -> _What | None:
    for e in evidence:
        if e.rule == "module_learning":
            kind = "dead_module" if e.details.get("signature") == "no_gradient" else \
                "not_optimised"
            return _What(kind, e.message.rstrip("."), {"module": str(e.details.get("module"))})
    return None


def _what_headroom(evidence: Sequence[Evidence], history: Sequence[StepFacts]) -> _What | None:
    for e in evidence:
        if e.rule == "headroom":
            name = parse_series(e.series).name
            dtype = _dtype(evidence, name, e.details.get("limit"))
            return _What("overflow_risk", f"{name} ({dtype}) is close to exp overflow at step "
                         f"{text.step(e.first_step)}: max {_num(e.details.get('max'))} leaves "
                         f"{_num(e.details.get('headroom'))} of {_num(e.details.get('limit'))}",
                         {"tensor": name, "dtype": dtype})
    return None


def _what_else(evidence: Sequence[Evidence], history: Sequence[StepFacts]) -> _What:
    root = evidence[0]
    kind = {"no_learning": "no_learning", "threshold": "threshold"}.get(root.rule, root.rule)
    return _What(kind, root.message.rstrip("."))


READERS: tuple[Reader, ...] = (
    _what_op, _what_origin, _what_denominator, _what_overflowed_tensor, _what_nonfinite_tensor,
    _what_nonfinite_loss, _what_backward, _what_stall, _what_one_bad_step, _what_explosion,
    _what_spike, _what_module, _what_headroom, _what_else,
)

# --------------------------------------------------------------------------- why

_LR_EFFECTS = {"loss_spike", "bad_batch", "grad_explosion", "nonfinite_loss",
               "nonfinite_tensor", "nonfinite_module", "nonfinite_op", "overflow",
               "nonfinite_backward", "guard_stall", "detached_loss"}


def _why(evidence: Sequence[Evidence], history: Sequence[StepFacts], onset: int,
         kind: str) -> str:
    jump = _lr_jump(history, onset)
    if jump is not None and kind in _LR_EFFECTS:
        before, after, at = jump
        return f"the learning rate jumped {_num(before)} → {_num(after)} at step {text.step(at)}"
    if kind in ("loss_spike", "bad_batch", "guard_stall", "overflow", "float16_overflow",
                "grad_explosion"):
        return _component_jump(history, onset)
    return ""


def _lr_jump(history: Sequence[StepFacts], onset: int) -> tuple[float, float, int] | None:
    """The last change of the lr by ×``LR_JUMP`` in the steps just before the onset, a rise
    rather than a fall (the lr logged at a step is used by that step's update, whose effect
    shows at the next step)."""
    lrs = [(f.step, f.lr) for f in history if f.lr is not None and math.isfinite(f.lr)
           and f.step < onset]
    jumps = [(a, b, step) for (_, a), (step, b) in itertools.pairwise(lrs)
             if onset - LR_LOOKBACK <= step and a > 0 and b > 0
             and max(a / b, b / a) >= LR_JUMP]
    rises = [j for j in jumps if j[1] > j[0]]  # a spike follows a rise; a drop rarely causes one
    chosen = rises or jumps
    return chosen[-1] if chosen else None


def _component_jump(history: Sequence[StepFacts], onset: int) -> str:
    """"points 0.41 → 52.3, 98 % of the loss" for the component that made the jump."""
    before = [f for f in history if f.step < onset and f.components]
    at = next((f for f in history if f.step == onset and f.components), None)
    if not before or at is None:
        return ""
    prev = before[-1]
    if set(prev.components) - set(at.components) or not all(
            math.isfinite(v) for v in at.components.values()):
        return ""  # a component went missing or non-finite: no jump to attribute
    rises = {name: at.components[name] - prev.components.get(name, 0.0)
             for name in at.components}
    total = sum(at.components.values())
    name = max(rises, key=lambda n: rises[n])
    share = at.components[name] / total if total > 0 else 0.0
    if not rises[name] > 0 or share < 0.5:
        return ""  # no one component made the jump
    if name not in prev.components:
        return (f"{name} appeared at {_num(at.components[name])}, {text.percent(share)} of the "
                "loss")
    return (f"{name} {_num(prev.components[name])} → {_num(at.components[name])}, "
            f"{text.percent(share)} of the loss")


# --------------------------------------------------------------------------- words


def _made(details: Details) -> str:
    return "NaN" if details.get("origin_kind") == "nan" else "Inf"


def _step(details: Details) -> str:
    return text.step(int(float(details.get("origin_step", 0))))


def _source(details: Details) -> str:
    """`` at model.py:41 in PointMapNet.forward``, from ``/path/model.py:41 in forward``."""
    source = details.get("origin_source")
    if not isinstance(source, str):
        return ""
    location, _, function = source.partition(" in ")
    path, _, line = location.rpartition(":")
    owner = details.get("origin_module_type")
    function = f"{owner}.{function}" if owner and function == "forward" else function
    return f" at {os.path.basename(path)}:{line}" + (f" in {function}" if function else "")


def _float16(evidence: Sequence[Evidence]) -> bool:
    return any(e.details.get("dtype") == "float16" or _is_f16(e.details.get("limit"))
               for e in evidence)


def _is_f16(limit: object) -> bool:
    return isinstance(limit, float) and abs(limit - FLOAT16_LIMIT) < 0.01


def _dtype(evidence: Sequence[Evidence], name: str, limit: object) -> str:
    for e in evidence:
        if e.series in (f"tensor/{name}", f"tensor/{name}/headroom") and e.details.get("dtype"):
            return str(e.details["dtype"])
    if _is_f16(limit):
        return "float16"
    return "float32 or bfloat16"


def _peak_max(evidence: Sequence[Evidence], name: str, headroom: Evidence) -> object:
    maxima = [headroom.details.get("max")]
    maxima += [e.details.get("max") for e in evidence if e.series == f"tensor/{name}"]
    finite = [m for m in maxima if isinstance(m, float) and math.isfinite(m)]
    return max(finite) if finite else headroom.details.get("max")


def _grad(details: Details) -> str:
    g = details.get("grad_norm")
    return "exactly 0" if g == 0 else "not reported" if g is None else f"{_num(g)}"


def _value(e: Evidence) -> str:
    v = e.details.get("value")
    return text.value(v) if isinstance(v, float) else "non-finite"


def _num(x: object) -> str:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return "?"
    return text.value(float(x))
