"""A step whose values are still on their way to the host, and how it becomes a ``Step``.

Built by ``Monitor.log_step`` on the training thread; ``build()`` runs on the sender thread,
where waiting for the device copy costs the training loop nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from trainvitals.protocol import ClipEvent, Step, TensorStats
from trainvitals.trainer_plugin.values.clip import GuardSpec, resolve_clip
from trainvitals.trainer_plugin.values.staging import PendingValues
from trainvitals.trainer_plugin.values.stats import unpack_stats
from trainvitals.trainer_plugin.watch.registry import WatchedStep

__all__ = ["PendingStep", "TensorMeta"]


@dataclass(frozen=True)
class TensorMeta:
    """What the host already knows about a watched tensor without reading it."""

    count: int
    dtype: torch.dtype
    feeds_exp: bool


@dataclass
class PendingStep:
    """One step's metadata plus its in-flight values; ``build()`` makes the ``Step``."""

    run: str
    session: str
    rank: int
    seq: int
    step: int
    time: float
    values: PendingValues
    tensors: dict[str, TensorMeta]
    components: tuple[str, ...]
    scalars: tuple[str, ...]
    guard: tuple[GuardSpec, tuple[str, ...]] | None
    watch: WatchedStep | None = None  # what Monitor.watch* added: scalars, origin

    def build(self) -> Step:
        """Wait for the host copy (sender thread only) and assemble the record."""
        v = self.values.wait()

        def one(key: str) -> float | None:
            return v[key][0] if key in v else None

        clip = self._clip(v)
        extra, origin = ({}, None) if self.watch is None else self.watch.resolve(v, self.step)
        loss, used = one("loss"), one("loss_used")
        if self.guard is not None:  # the guard saw the raw loss and made the used one
            loss = v["g/raw"][0] if loss is None else loss
            used = v["g/used"][0] if used is None else used
        components = {n: v[f"c/{n}"][0] for n in self.components}
        if not components and self.guard is not None:  # every step, not only clipped ones
            components = {n: v[f"gc/{n}"][0] for n in self.guard[1]}
        return Step(
            run=self.run, session=self.session, seq=self.seq, step=self.step, rank=self.rank,
            time=self.time, loss=loss, loss_used=used, grad_norm=one("grad_norm"),
            grad_norm_post=one("grad_norm_post"), lr=one("lr"), components=components,
            scalars={**extra, **{n: v[f"s/{n}"][0] for n in self.scalars}},
            tensors=self._tensor_stats(v), clip=clip, origin=origin,
        )

    def _tensor_stats(self, v: dict[str, list[float]]) -> dict[str, TensorStats]:
        return {name: unpack_stats(v[f"t/{name}"], count=meta.count, dtype=meta.dtype,
                                   feeds_exp=meta.feeds_exp)
                for name, meta in self.tensors.items()}

    def _clip(self, v: dict[str, list[float]]) -> ClipEvent | None:
        if self.guard is None:
            return None
        spec, names = self.guard
        components = {n: v[f"gc/{n}"][0] for n in names}
        return resolve_clip(v["g/raw"][0], spec, components)
