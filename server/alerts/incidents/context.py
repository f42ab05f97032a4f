"""What the incident model remembers of each rank's recent steps, to say *why*: the learning
rate and the loss components just before an onset. Bounded: ``RECENT`` steps per rank."""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

from trainvitals.protocol import Step
from trainvitals.protocol.series import FIRST_BAD_MICRO_BATCH, LR_GROUP, MICRO_BATCHES

__all__ = ["RECENT", "Recent", "StepFacts"]

RECENT = 16


@dataclass(frozen=True, slots=True)
class StepFacts:
    """The few values of one step that explain what follows it."""

    step: int
    lr: float | None
    loss: float | None
    components: dict[str, float] = field(default_factory=dict)
    # gradient accumulation: (the first micro-batch that went non-finite, 0-based; how many)
    micro: tuple[int, int] | None = None


def facts_of(step: Step) -> StepFacts:
    """``step``'s facts; the lr is the step's own, else the first parameter group's."""
    lr = step.lr if step.lr is not None else step.scalars.get(f"{LR_GROUP}0")
    components = {k: v for k, v in step.components.items() if not math.isnan(v)}
    return StepFacts(step.step, lr, step.loss, components, _micro(step))


def _micro(step: Step) -> tuple[int, int] | None:
    """(first bad micro-batch, micro-batches) when the trainer said so sensibly, else None:
    these are a sender's numbers (any float, NaN and ±Inf included)."""
    first = step.scalars.get(FIRST_BAD_MICRO_BATCH, -1.0)
    count = step.scalars.get(MICRO_BATCHES, 0.0)
    if not (1 < count <= 2**31 and 0 <= first < count):  # False for NaN; bounds ±Inf
        return None
    return int(first), int(count)


class Recent:
    """The last ``RECENT`` steps of each (run, rank), oldest first."""

    def __init__(self) -> None:
        self._steps: dict[tuple[str, int], deque[StepFacts]] = {}

    def note(self, step: Step) -> None:
        recent = self._steps.setdefault((step.run, step.rank), deque(maxlen=RECENT))
        recent.append(facts_of(step))

    def of(self, run: str, rank: int) -> list[StepFacts]:
        return list(self._steps.get((run, rank), ()))

    def ranks(self, run: str) -> int:
        """How many ranks of ``run`` were seen."""
        return sum(1 for key in self._steps if key[0] == run)

    def forget(self, run: str) -> None:
        for key in [key for key in self._steps if key[0] == run]:
            del self._steps[key]
