"""Host side of ``Monitor.watch``: from one step's watch values to where non-finite values began.

Runs on the sender thread, on plain floats that arrived with the step's single transfer (or
were read at once, on the CPU: ``trainvitals.trainer_plugin.watch.host``). Each value is max |x|
of one tensor, so it is NaN when the tensor held a NaN, +Inf when it held ±Inf (and no NaN),
and finite otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from trainvitals.protocol.messages import NonFiniteKind, NonFiniteStage

__all__ = ["Located", "WatchFrame", "locate"]

ROOT = 0  # named_modules() yields the watched model first


@dataclass(frozen=True)
class WatchFrame:
    """What the host knows about one step's watch values without reading them.

    ``calls`` lists each completed module call in execution order as (module index, number of
    input values, number of output values); the values follow the same order, then one value
    per gradient in ``grads`` (parameter indices, backward order). ``parts`` says where the
    values were staged: one key per device, with the positions it holds (``None``: all, in
    order); ``host`` holds the values themselves when they were read at once (the CPU path).
    """

    names: tuple[str, ...]
    types: tuple[str, ...]
    params: tuple[str, ...]
    index: int
    calls: tuple[tuple[int, int, int], ...]
    grads: tuple[int, ...]
    parts: tuple[tuple[str, tuple[int, ...] | None], ...]
    width: int
    host: tuple[float, ...] | None = None

    @property
    def active(self) -> bool:
        """Whether the model ran forward or backward since the last step."""
        return bool(self.calls or self.grads)

    def values(self, staged: dict[str, list[float]]) -> list[float]:
        """The frame's values in recording order, gathered from the staged host copies."""
        if self.host is not None:
            return list(self.host)
        if len(self.parts) == 1 and self.parts[0][1] is None:
            return staged[self.parts[0][0]]
        out = [math.nan] * self.width
        for key, positions in self.parts:
            for position, value in zip(positions or range(self.width), staged[key], strict=True):
                out[position] = value
        return out


@dataclass(frozen=True)
class Located:
    """Where one step's non-finite values began; ``call`` is the root call that produced them."""

    kind: NonFiniteKind
    stage: NonFiniteStage
    module: str | None
    module_type: str | None
    param: str | None
    call: int


def locate(frame: WatchFrame, values: Sequence[float]) -> Located | None:
    """The step's origin, or None when nothing shows a non-finite problem.

    A step has a problem when an output of the watched model itself or a gradient was
    non-finite (a module output alone may hold an intentional ±Inf, e.g. an attention mask,
    that the model later removes). The origin is then the first module, in execution order,
    whose output was non-finite while its inputs were finite, and the first parameter, in
    backward order, whose gradient was non-finite. When no module qualifies, the model was
    given non-finite inputs (stage ``input``), or only the backward pass went non-finite.
    """
    first: tuple[int, NonFiniteKind, int] | None = None
    root_bad = False
    root_given: NonFiniteKind | None = None  # what the model was given, when not finite
    root_calls, at = 0, 0
    for module, n_in, n_out in frame.calls:
        inputs, outputs = values[at:at + n_in], values[at + n_in:at + n_in + n_out]
        at += n_in + n_out
        kind, given = _kind(outputs), _kind(inputs)
        if first is None and kind is not None and given is None:
            first = (module, kind, root_calls)
        if module == ROOT:
            root_bad = root_bad or kind is not None
            root_given = root_given or given
            root_calls += 1
    grad = next(((p, k) for p, v in zip(frame.grads, values[at:], strict=False)
                 if (k := _kind((v,))) is not None), None)
    if not root_bad and grad is None:
        return None
    param = None if grad is None else frame.params[grad[0]]
    if first is not None:
        module, kind, call = first
        return Located(kind, "forward", frame.names[module], frame.types[module], param, call)
    if root_bad and root_given is not None:
        return Located(root_given, "input", frame.names[ROOT], frame.types[ROOT], param, -1)
    assert grad is not None  # the forward stayed finite: only the backward pass went wrong
    return Located(grad[1], "backward", None, None, param, -1)


def _kind(values: Sequence[float]) -> NonFiniteKind | None:
    if any(math.isnan(v) for v in values):
        return "nan"
    if any(math.isinf(v) for v in values):
        return "inf"
    return None
