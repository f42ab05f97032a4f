"""The series-name grammar: how one ``Step`` becomes named values, and what the names mean.

This is the one place the grammar is written. The store, REST, the alert rules, the plugin's
watches and (through ``contract.json``, see ``trainvitals.protocol.contract``) the page all
read it from here.

Names:

* ``loss``, ``loss_used``, ``grad_norm``, ``grad_norm_post``, ``lr`` — the step's own fields;
* ``loss/<component>`` — a loss component;
* ``scalar/<name>`` — any other scalar. The plugin's watches send families of them that the
  server's rules read: ``update/<module>``, ``dead_grads/<module>``, ``trainable/<module>``,
  ``frozen/<module>``, ``not_optimised/<module>``, ``lr/group<i>`` (``watch_optimizer``) and
  ``normalisation/<name>/<stat>`` (``denominator``);
* ``tensor/<name>/<stat>`` — one statistic of a named tensor, ``stat`` one of
  ``TENSOR_STATS`` (the numeric fields of ``TensorStats``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Literal

from trainvitals.protocol.messages import Step, TensorStats

__all__ = [
    "AMP_SCALE",
    "AMP_SKIPPED",
    "BACKWARD_FACTOR",
    "COMPONENT",
    "DEAD_GRADS",
    "FIRST_BAD_MICRO_BATCH",
    "FROZEN",
    "LR_GROUP",
    "MICRO_BATCHES",
    "NORMALISATION",
    "NORMALISATION_STATS",
    "NOT_OPTIMISED",
    "SCALAR",
    "TENSOR",
    "TENSOR_STATS",
    "TOP_LEVEL",
    "TRAINABLE",
    "UPDATE",
    "SeriesName",
    "StepValues",
    "ValuesOf",
    "component_series",
    "parse_series",
    "scalar_series",
    "step_values",
    "tensor_series",
    "tensor_values",
]

TOP_LEVEL = ("loss", "loss_used", "grad_norm", "grad_norm_post", "lr")
COMPONENT, SCALAR, TENSOR = "loss/", "scalar/", "tensor/"
# Every numeric field of TensorStats, in its order (``dtype`` is text, not a series).
TENSOR_STATS = tuple(f.name for f in fields(TensorStats) if f.name != "dtype")
# Scalar families: names *inside* ``scalar/`` that the plugin's watches send.
UPDATE, DEAD_GRADS, TRAINABLE, FROZEN = "update/", "dead_grads/", "trainable/", "frozen/"
NOT_OPTIMISED = "not_optimised/"  # trainable tensors of a module that no optimizer group holds
# d(loss used)/d(raw loss), as backward brought it to the raw loss (``attach``): 0 means a guard
# zeroed the loss before backward.
BACKWARD_FACTOR = "backward_factor"
# A GradScaler's step (``watch_scaler``): 1 when it skipped the optimizer step, and its scale.
AMP_SKIPPED, AMP_SCALE = "amp/skipped", "amp/scale"
# Gradient accumulation: how many micro-batches the step had, the first non-finite one (-1: none)
MICRO_BATCHES, FIRST_BAD_MICRO_BATCH = "micro/batches", "micro/first_nonfinite"
LR_GROUP = "lr/group"
NORMALISATION = "normalisation/"
NORMALISATION_STATS = ("denominator_min", "eps", "valid_min", "valid_zero")

SeriesKind = Literal["top", "component", "scalar", "tensor", "other"]


@dataclass(frozen=True, slots=True)
class SeriesName:
    """A series name taken apart: ``kind``, the ``name`` inside it and, for tensors, ``stat``."""

    kind: SeriesKind
    name: str
    stat: str | None = None


def component_series(component: str) -> str:
    """``loss/<component>``."""
    return f"{COMPONENT}{component}"


def scalar_series(name: str) -> str:
    """``scalar/<name>``."""
    return f"{SCALAR}{name}"


def tensor_series(tensor: str, stat: str) -> str:
    """``tensor/<tensor>/<stat>``."""
    return f"{TENSOR}{tensor}/{stat}"


def parse_series(series: str) -> SeriesName:
    """What ``series`` names. A tensor's name may itself hold ``/``: the stat is the last part."""
    if series in TOP_LEVEL:
        return SeriesName("top", series)
    if series.startswith(COMPONENT):
        return SeriesName("component", series[len(COMPONENT):])
    if series.startswith(SCALAR):
        return SeriesName("scalar", series[len(SCALAR):])
    if series.startswith(TENSOR):
        tensor, sep, stat = series[len(TENSOR):].rpartition("/")
        if sep and tensor and stat in TENSOR_STATS:
            return SeriesName("tensor", tensor, stat)
    return SeriesName("other", series)


def step_values(step: Step) -> dict[str, float]:
    """Every value reported at this step, by series name; unreported values are absent."""
    values: dict[str, float] = {}
    for name in TOP_LEVEL:
        value = getattr(step, name)
        if value is not None:
            values[name] = value
    for name, value in step.components.items():
        values[component_series(name)] = value
    for name, value in step.scalars.items():
        values[scalar_series(name)] = value
    for name, stats in step.tensors.items():
        values.update(tensor_values(name, stats))
    return values


ValuesOf = Callable[[Step], dict[str, float]]
"""Something that gives a step's values: ``step_values`` itself, or a ``StepValues``."""


class StepValues:
    """``step_values`` derived once per step and handed to everyone who needs them.

    The server's writer makes one per commit: the store writes, the alert rules judge and the
    live hub publishes the very same dict, instead of each deriving its own. Keeps each step
    it has seen (so that ``id`` reuse cannot mix two steps up); make a new one per batch.
    """

    __slots__ = ("_seen",)

    def __init__(self) -> None:
        self._seen: dict[int, tuple[Step, dict[str, float]]] = {}

    def __call__(self, step: Step) -> dict[str, float]:
        hit = self._seen.get(id(step))
        if hit is None or hit[0] is not step:
            hit = self._seen[id(step)] = (step, step_values(step))
        return hit[1]


def tensor_values(name: str, stats: TensorStats) -> dict[str, float]:
    """The series of one tensor's statistics (``headroom`` only when it was measured)."""
    values = {tensor_series(name, stat): float(getattr(stats, stat)) for stat in TENSOR_STATS
              if stat != "headroom"}
    if stats.headroom is not None:
        values[tensor_series(name, "headroom")] = stats.headroom
    return values
