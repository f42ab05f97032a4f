"""The three ways a researcher wires trainvitals into a loop, behind the calls the loop makes.

A case's training loop is written once, as its author wrote it, and calls a ``Probe`` where a
trainvitals user would put a line. Each wiring level does with those calls what its README
section says, and nothing more:

* ``minimal`` ("Use it in your training loop"): ``mon.tensor`` on the tensors the loop names,
  ``mon.clip_guard`` in place of the trainer's guard line (only where there is one), and
  ``mon.log_step(step, components=..., grad_norm=pre_clip_norm, lr=...)``;
* ``everything`` ("Find where NaN starts"): ``minimal`` plus ``mon.watch(model,
  op_trace=True)``, ``mon.watch_optimizer(optimizer, model)`` and ``mon.denominator`` where
  the code divides by something;
* ``attach`` ("Plug into an existing trainer"): ``trainvitals.attach(model, optimizer, run=...,
  loss_module=criterion)`` and nothing else — every call the loop makes is a no-op, and the
  guard stays the trainer's own ``if loss > clip_loss: loss = loss * 0.0``;
* ``off``: no trainvitals at all (to check a case's planted failure on its own).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import torch

__all__ = ["LEVELS", "Probe", "TrainingAborted", "Truth"]

LEVELS = ("minimal", "everything", "attach")
Number = torch.Tensor | float | int


class TrainingAborted(FloatingPointError):
    """The trainer's own abort on a non-finite loss (the π³ trainer raises one)."""


@dataclass
class Truth:
    """What a case saw with plain torch while it trained: where its failure really began.

    ``onset`` is set once, by the first step whose check holds; ``what`` says which check.
    """

    onset: int | None = None
    what: str = ""
    steps: int = 0
    status: str = "finished"
    facts: dict[str, Any] = field(default_factory=dict)

    def first(self, step: int, holds: bool | torch.Tensor, what: str) -> None:
        """Mark ``step`` as the onset if ``holds`` and no earlier step was marked."""
        if self.onset is None and bool(holds):
            self.onset, self.what = step, what


class Probe:
    """The trainvitals calls of one loop at one wiring level; use as a context manager around
    the loop (an exception ends the run as ``crashed``, as ``with Monitor(...)`` does)."""

    def __init__(self, level: str, run: str, *, server: str | None = None,
                 token: str | None = None, rank: int | None = None,
                 world_size: int | None = None) -> None:
        if level not in (*LEVELS, "off"):
            raise ValueError(f"unknown level {level!r}")
        self.level, self.run = level, run
        self._server, self._token = server, token
        self._rank, self._world = rank, world_size
        self.monitor: Any = None
        self.handle: Any = None

    # ------------------------------------------------------------ set-up

    def start(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
              criterion: torch.nn.Module) -> Probe:
        """Wire trainvitals in, once model, optimizer and criterion exist."""
        import trainvitals

        options: dict[str, Any] = {"server": self._server, "token": self._token, "spool": None}
        if self._rank is not None:
            options.update(rank=self._rank, world_size=self._world)
        if self.level == "attach":
            self.handle = trainvitals.attach(model, optimizer, run=self.run,
                                             loss_module=criterion, **options)
        elif self.level in ("minimal", "everything"):
            self.monitor = trainvitals.Monitor(self.run, **options)
            if self.level == "everything":
                self.monitor.watch(model, op_trace=True)
                self.monitor.watch_optimizer(optimizer, model)
        return self

    # ------------------------------------------------------------ the loop's calls

    def tensor(self, name: str, t: torch.Tensor, *, feeds_exp: bool = False) -> None:
        """``mon.tensor`` (minimal, everything)."""
        if self.monitor is not None:
            self.monitor.tensor(name, t, feeds_exp=feeds_exp)

    def guard(self, loss: torch.Tensor, clip_loss: float,
              components: Mapping[str, Number] | None = None) -> torch.Tensor:
        """The trainer's loss guard: ``mon.clip_guard`` where the Monitor is wired in by hand,
        else the trainer's original line."""
        if self.monitor is not None:
            used: torch.Tensor = self.monitor.clip_guard(loss, clip_loss, components)
            return used
        if loss > clip_loss:
            loss = loss * 0.0
        return loss

    def denominator(self, name: str, value: Number, *, valid_count: Number | None = None,
                    eps: float = 1e-6) -> None:
        """``mon.denominator`` (everything only)."""
        if self.monitor is not None and self.level == "everything":
            self.monitor.denominator(name, value, valid_count=valid_count, eps=eps)

    def end_step(self, step: int, *, loss: Number | None = None,
                 components: Mapping[str, Number] | None = None,
                 grad_norm: Number | None = None, lr: Number | None = None) -> None:
        """``mon.log_step`` (minimal, everything); attach ends steps at ``optimizer.step()``."""
        if self.monitor is not None:
            self.monitor.log_step(step, loss=loss, components=components,
                                  grad_norm=grad_norm, lr=lr)

    # ------------------------------------------------------------ the end

    def close(self, status: str = "finished", reason: str = "") -> None:
        """End the run; the Monitor waits for the server's acknowledgement."""
        if self.handle is not None:
            self.handle.close(status, reason)
        elif self.monitor is not None:
            self.monitor.close(status, reason)
        self.handle = self.monitor = None

    def __enter__(self) -> Probe:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc is None:
            self.close()
        else:
            self.close("crashed", f"{type(exc).__name__}: {exc}"[:500])
