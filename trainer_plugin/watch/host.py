"""``Monitor.watch`` where reading is free (the CPU): check *whether* every step, localise rarely.

On a device where reading a value stalls nothing (``values.devices``), the
watch does not reduce every module's inputs and outputs every step. Every step it reads only
what says whether something went non-finite: the model's own outputs (one ``aminmax`` per
floating tensor; its inputs too when an output is non-finite, to tell bad data from a bad
module) and, at the end of each backward pass, all gradients together (one concatenation and
one ``aminmax``; one value per gradient only when that says non-finite). The hooks themselves
do next to nothing: Python run between the step's kernels runs on cold caches.

When the model's output or a gradient is non-finite at the start of an episode (the step
before was clean), ``ModuleWatch`` re-runs the step's forward at once — before the optimizer
can touch the parameters — with every module hooked (``optrace.rerun``: the recorded RNG
state, ``no_grad``, buffers put back), and ``replace`` puts what it read in place of the
model-level values. The result is the host data that the CUDA path stages, so
``origin.locate`` judges both alike.

A value here is max |x| of one tensor as far as ``locate`` cares: NaN when the tensor holds a
NaN, +Inf when it holds ±Inf, a finite number otherwise (0.0 stands for "all finite" where
only that was checked).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from trainvitals.trainer_plugin.values.devices import reads_now
from trainvitals.trainer_plugin.watch.optrace import MAX_CALLS_PER_STEP, RecordedCall, leaves
from trainvitals.trainer_plugin.watch.origin import ROOT

__all__ = ["HostSteps", "grads_now", "max_abs_now", "watched_tensors"]

Call = tuple[int, int, int]  # (module index, input values, output values)


def watched_tensors(obj: Any) -> Iterator[torch.Tensor]:
    """The tensors in ``obj`` that the watch reduces: non-empty, strided, floating or complex."""
    for t in leaves(obj):
        if (t.is_floating_point() or t.is_complex()) and t.numel() > 0 \
                and t.layout == torch.strided:
            yield t.detach()


def max_abs_now(t: torch.Tensor) -> float:
    """max |x| of ``t``, read now (one ``aminmax``; NaN and ±Inf propagate through it)."""
    low_t, high_t = (torch.view_as_real(t) if t.is_complex() else t).aminmax()
    low, high = low_t.item(), high_t.item()
    return math.nan if math.isnan(low) or math.isnan(high) else max(-low, high)


def grads_now(grads: list[torch.Tensor]) -> list[float]:
    """One value per gradient, read now; one reduction for all of them while all are finite."""
    flat = [(torch.view_as_real(g) if g.is_complex() else g).reshape(-1) for g in grads]
    low, high = torch.cat(flat).aminmax()
    if math.isfinite(low.item()) and math.isfinite(high.item()):
        return [0.0] * len(grads)
    return [max_abs_now(g) for g in grads]


@dataclass
class _Segment:
    """One root call of the step: its module calls and their values (model level, or all
    modules after a re-run)."""

    calls: list[Call]
    values: list[float]


class HostSteps:
    """What the host-mode watch has read during the current step (training thread)."""

    def __init__(self) -> None:
        self.saw_device = False  # met a value that cannot be read now: use the device path
        self.reset()

    def reset(self) -> None:
        """Forget the step (``saw_device`` stays: it is about the model, not the step)."""
        self.recorded: list[RecordedCall] = []  # the step's root calls, for a re-run
        self.under_way: list[RecordedCall] = []  # root calls whose forward is running
        self.segments: list[_Segment] = []
        self.count = 0  # values read this step
        self.grad_refs: list[tuple[int, torch.Tensor]] = []  # the running backward pass
        self.grads: list[int] = []
        self.grad_values: list[float] = []
        self.end_queued = False  # a callback at the end of the running backward is queued
        self.localised = False  # this step was re-run already
        self.bad = False  # a model output or a gradient was non-finite (what locate says)
        self.forward_bad = False  # a model output was non-finite (the forward made it)

    def __len__(self) -> int:
        return self.count

    def read(self, obj: Any) -> list[float] | None:
        """max |x| of each watched tensor in ``obj``; None if one of them cannot be read now."""
        tensors = list(watched_tensors(obj))
        if not all(reads_now(t) for t in tensors):
            self.saw_device = True
            return None
        return [max_abs_now(t) for t in tensors]

    def root_starts(self, call: RecordedCall) -> None:
        """The model's forward begins (nothing is read yet)."""
        if len(self.recorded) < MAX_CALLS_PER_STEP:
            self.recorded.append(call)
        self.under_way.append(call)

    def root_ends(self, output: Any) -> bool:
        """The model's forward returned: read its outputs — and, only when one is non-finite,
        its inputs, which tell bad data from a bad module; whether an output is non-finite."""
        call = self.under_way.pop() if self.under_way else None
        outputs = self.read(output)
        if outputs is None:
            return False
        bad = not all(math.isfinite(v) for v in outputs)
        inputs = (self.read((call.args, call.kwargs)) or []) if bad and call else []
        self.segments.append(_Segment([(ROOT, len(inputs), len(outputs))], inputs + outputs))
        self.count += len(inputs) + len(outputs)
        self.bad = self.bad or bad
        self.forward_bad = self.forward_bad or bad
        return bad

    def backward_ends(self) -> bool:
        """Read the gradients of the backward pass that ends; whether one is non-finite."""
        refs, self.grad_refs, self.end_queued = self.grad_refs, [], False
        refs = [(i, g) for i, g in refs if g.layout == torch.strided and g.numel() > 0]
        if not refs:
            return False
        if not all(reads_now(g) for _, g in refs):
            self.saw_device = True
            return False
        values = grads_now([g.detach() for _, g in refs])
        self.grads += [index for index, _ in refs]
        self.grad_values += values
        self.count += len(values)
        bad = not all(math.isfinite(v) for v in values)
        self.bad = self.bad or bad
        return bad

    def replace(self, calls: list[Call], values: list[float]) -> bool:
        """Put a re-run's module calls in place of the model-level segments they repeat, each
        only if the re-run saw the same kinds of model outputs (a forward that does not repeat
        itself exactly must not change the verdict). Whether any was replaced."""
        replaced = False
        for index, segment in enumerate(_split(calls, values)[:len(self.segments)]):
            if _kinds(_outputs(segment)) == _kinds(_outputs(self.segments[index])):
                self.count += len(segment.values) - len(self.segments[index].values)
                self.segments[index] = segment
                replaced = True
        return replaced

    def take(self) -> tuple[list[Call], list[float], list[int], list[float], bool]:
        """The step's calls and values, its gradients and whether it went non-finite;
        empties the record."""
        calls = [c for s in self.segments for c in s.calls]
        values = [v for s in self.segments for v in s.values]
        out = calls, values, self.grads, self.grad_values, self.bad
        self.reset()
        return out


def _split(calls: list[Call], values: list[float]) -> list[_Segment]:
    """Module calls in execution order, cut after each root call (it returns last)."""
    segments, current, at = [], _Segment([], []), 0
    for call in calls:
        width = call[1] + call[2]
        current.calls.append(call)
        current.values += values[at:at + width]
        at += width
        if call[0] == ROOT:
            segments.append(current)
            current = _Segment([], [])
    return segments


def _outputs(segment: _Segment) -> list[float]:
    _, _, n_out = segment.calls[-1]
    return segment.values[len(segment.values) - n_out:]


def _kinds(values: list[float]) -> list[str]:
    return ["nan" if math.isnan(v) else "inf" if math.isinf(v) else "finite" for v in values]
