"""Gradient accumulation: several micro-batches make one optimizer step, and one record.

A trainer that accumulates calls ``tensor(name, …)`` and ``clip_guard`` once per micro-batch
and ``log_step`` once per optimizer step. The statistics of a tensor logged several times in
one step while gradients are on (training) are merged (counts and sums added, min of the
minima, max of the maxima), so a NaN in micro-batch 3 of 4 is not overwritten by a clean
micro-batch 4; under ``no_grad`` (validation) the latest call replaces the others, as it always
did. The step says how many micro-batches it had (``micro/batches``) and the first whose loss
or tensors went non-finite (``micro/first_nonfinite``, 0-based, -1 for none) — computed on the
device, no sync.
"""

from __future__ import annotations

import torch

from trainvitals.protocol.series import FIRST_BAD_MICRO_BATCH, MICRO_BATCHES

__all__ = ["MicroBatches", "merge_stats"]

Stats = torch.Tensor | list[float]


def merge_stats(a: Stats, b: Stats) -> Stats:
    """The statistics of two parts of one tensor (see ``stats.unpack_stats`` for the order)."""
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        counts = a[:4] + b[:4]
        low, high = torch.minimum(a[4], b[4]), torch.maximum(a[5], b[5])
        return torch.cat([counts, low.reshape(1), high.reshape(1), (a[6] + b[6]).reshape(1)])
    x = a.tolist() if isinstance(a, torch.Tensor) else list(a)
    y = b.tolist() if isinstance(b, torch.Tensor) else list(b)
    return [*(p + q for p, q in zip(x[:4], y[:4], strict=True)), min(x[4], y[4]),
            max(x[5], y[5]), x[6] + y[6]]


def _bad(stats: Stats) -> torch.Tensor | bool:
    if isinstance(stats, torch.Tensor):
        return stats[:3].sum() > 0
    return sum(stats[:3]) > 0


class MicroBatches:
    """What one optimizer step's micro-batches logged; ``reset()`` after each record.

    Which micro-batch went bad first is worked out only when a step had several (in
    ``scalars``): a step of one micro-batch — most training — pays nothing for it, not even a
    kernel on the device."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._stats: dict[str, Stats] = {}
        self._calls: dict[str, int] = {}
        self._losses = 0
        self._last_loss: torch.Tensor | None = None
        self._seen: list[tuple[int, Stats | None, torch.Tensor | None]] = []  # index, stats, loss

    def tensor(self, name: str, stats: Stats) -> Stats:
        """Note ``name``'s statistics of one more micro-batch; the step's merged statistics."""
        index = self._calls.get(name, 0)
        self._calls[name] = index + 1
        merged = stats if index == 0 else merge_stats(self._stats[name], stats)
        self._stats[name] = merged
        self._seen.append((index, stats, None))
        return merged

    def loss(self, raw: torch.Tensor) -> None:
        """Note one more micro-batch's raw loss; the same tensor twice (a loss hook and
        ``clip_guard`` both seeing it) is one micro-batch."""
        if raw is self._last_loss:
            return
        self._last_loss = raw
        self._seen.append((self._losses, None, raw.detach()))
        self._losses += 1

    def __contains__(self, name: str) -> bool:
        """Whether tensor ``name`` was logged in this step (while gradients were on)."""
        return name in self._stats

    @property
    def batches(self) -> int:
        """Micro-batches this step has seen (the most calls of any tensor, or losses)."""
        return max([self._losses, *self._calls.values()], default=0)

    def scalars(self) -> dict[str, torch.Tensor | float]:
        """The step's micro-batch scalars when it had more than one micro-batch, else none."""
        if self.batches < 2:
            return {}
        first: torch.Tensor | int = -1
        for index, stats, raw in self._seen:
            if stats is not None:
                bad: torch.Tensor | bool = _bad(stats)
            else:
                assert raw is not None
                bad = ~torch.isfinite(raw).all()
            first = _earliest(first, index, bad)
        return {MICRO_BATCHES: float(self.batches),
                FIRST_BAD_MICRO_BATCH: first if isinstance(first, torch.Tensor) else float(first)}


def _earliest(first: torch.Tensor | int, index: int, bad: torch.Tensor | bool
              ) -> torch.Tensor | int:
    """The first bad index so far, given whether micro-batch ``index`` was bad (on the
    device when ``bad`` is a device value: no sync)."""
    if not isinstance(bad, torch.Tensor):
        return index if bad and isinstance(first, int) and first < 0 else first
    fresh = torch.full((), index, dtype=torch.float64, device=bad.device)
    if isinstance(first, int):
        first = torch.full((), first, dtype=torch.float64, device=bad.device)
    elif first.device != bad.device:
        first = first.to(bad.device, non_blocking=True)
    return torch.where(bad & (first < 0), fresh, first)
