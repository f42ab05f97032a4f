"""How one ``Step`` record becomes named series values — the names the store, REST and alerts share.

Names: ``loss``, ``loss_used``, ``grad_norm``, ``grad_norm_post``, ``lr``;
``loss/<component>``; ``scalar/<name>``; ``tensor/<name>/<stat>`` with stat one of
``count nan posinf neginf min max mean absmax headroom``.
"""

from __future__ import annotations

from trainvitals.protocol import Step, TensorStats

__all__ = ["TENSOR_STATS", "step_values", "tensor_values"]

TOP_LEVEL = ("loss", "loss_used", "grad_norm", "grad_norm_post", "lr")
TENSOR_STATS = ("count", "nan", "posinf", "neginf", "min", "max", "mean", "absmax", "headroom")


def step_values(step: Step) -> dict[str, float]:
    """Every value reported at this step, by series name; unreported values are absent."""
    values: dict[str, float] = {}
    for name in TOP_LEVEL:
        value = getattr(step, name)
        if value is not None:
            values[name] = value
    for name, value in step.components.items():
        values[f"loss/{name}"] = value
    for name, value in step.scalars.items():
        values[f"scalar/{name}"] = value
    for name, stats in step.tensors.items():
        values.update(tensor_values(name, stats))
    return values


def tensor_values(name: str, stats: TensorStats) -> dict[str, float]:
    """The series of one tensor's statistics."""
    values = {f"tensor/{name}/{stat}": float(getattr(stats, stat)) for stat in TENSOR_STATS[:-1]}
    if stats.headroom is not None:
        values[f"tensor/{name}/headroom"] = stats.headroom
    return values
