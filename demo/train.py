"""The demo trainer: the original π³ trainer's loop, bad habits included.

What it reproduces (see the field notes):

* ``if loss > clip_loss: loss = loss * 0.0`` — a finite loss above 10 is zeroed, gradients are
  exactly 0, AdamW's momentum fades out and the run sits still while looking alive;
* abort when the loss is not finite — ``NaN > 10`` is False and ``inf * 0.0`` is NaN, so an
  overflowed loss ends here, loudly;
* ``clip_grad_norm_(…, 1.0)``, keeping the pre-clip norm it returns (the one worth logging);
* AdamW.

The trigger is deterministic: right after the optimizer step of ``spike_step`` the depth
head's bias jumps by ``+spike_shift`` — one bad update of log-depth, as a learning-rate spike
or a bad resume would make. Under ``exp`` depth is multiplied by ``e^Δ`` (≈ ×245 for Δ = 5.5)
and the loss never comes back under the clip; under ``softplus`` depth only moves by ≈ Δ and
the run learns its way back. A real LR spike is not used because its direction is not
deterministic: on a converged model this loss's momentum points to *smaller* depth, which
exp forgives. ``overflow=True`` uses a shift that puts ``z_raw`` past ln(float32 max) ≈ 88.7.

With a ``monitor`` the clip goes through ``monitor.clip_guard`` (same semantics, no host sync)
and every step is reported through the three ``MonitorLike`` methods; nothing else is used.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import torch

from trainvitals.demo.loss import LossOutput, pi3_loss
from trainvitals.demo.model import DepthActivation, PointMapNet, uses_exp
from trainvitals.demo.scenes import SceneBatch, make_batch

__all__ = [
    "DemoConfig",
    "DemoResult",
    "MonitorLike",
    "NonFiniteLossError",
    "Progress",
    "train",
]

Progress = Callable[[int, dict[str, float]], None]


class NonFiniteLossError(FloatingPointError):
    """The loss reaching backward is NaN/Inf: the original trainer's abort."""

    def __init__(self, step: int, raw: float, used: float) -> None:
        super().__init__(f"non-finite loss at step {step}: raw={raw} used={used}")
        self.step = step


class MonitorLike(Protocol):
    """What the trainer needs from a trainvitals monitor (the real one is in trainer_plugin)."""

    def tensor(self, name: str, t: torch.Tensor, *, feeds_exp: bool = False) -> None:
        """Record on-device statistics of ``t`` (no host sync)."""

    def clip_guard(
        self, raw_loss: torch.Tensor, threshold: float, components: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        """``torch.where(raw_loss > threshold, raw_loss * 0.0, raw_loss)``, and record the event."""
        ...

    def log_step(
        self,
        step: int,
        *,
        loss: torch.Tensor | float,
        loss_used: torch.Tensor | float,
        components: dict[str, torch.Tensor],
        grad_norm: torch.Tensor | float,
        grad_norm_post: torch.Tensor | float | None = None,
        lr: float | None = None,
    ) -> None:
        """End the step with its loss, the loss actually backpropagated and gradient norms."""


@dataclass
class DemoConfig:
    """One demo run. Defaults: healthy → spike at ``spike_step`` → silent stall (``exp``)."""

    depth_activation: DepthActivation = "exp"  # "exp" | "softplus" | "exp_clamp"
    steps: int = 200
    seed: int = 0
    clip_loss: float = 10.0
    spike_step: int = 100  # after this step's update, log-depth jumps by the shift below
    spike_shift: float = 5.5  # exp: depth ×245 → loss ≫ 10; softplus: depth +5.5 → loss < 10
    overflow: bool = False  # jump by ``overflow_shift`` instead: exp → Inf → NaN → abort
    overflow_shift: float = 100.0  # > ln(float32 max) ≈ 88.7
    empty_sample_step: int | None = None  # a batch with an all-invalid sample: the 0/ε NaN
    lr: float = 2e-3
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    batch_size: int = 8
    image_size: int = 32
    num_batches: int = 32  # a fixed pool, cycled: drawing scenes each step would dominate time
    record_history: bool = True  # per-step floats for tests; costs host syncs (free on CPU)
    # torch intra-op threads for the run (restored after); None keeps the process setting.
    # 1 is best on a shared 2-core box: two OpenMP threads spin-wait each other under load.
    num_threads: int | None = None

    def shift(self) -> float:
        """The log-depth jump applied after ``spike_step``."""
        return self.overflow_shift if self.overflow else self.spike_shift


@dataclass
class DemoResult:
    """How the run ended: ``status`` is "finished" or "crashed"; ``history`` one dict per step."""

    status: str
    steps_run: int
    reason: str
    history: list[dict[str, float]] = field(default_factory=list)


@dataclass
class _StepOut:
    """The tensors of one step that the monitor and the history both need."""

    raw: torch.Tensor
    used: torch.Tensor
    loss: LossOutput
    z_raw: torch.Tensor
    grad_norm_pre: torch.Tensor | None = None
    grad_norm_post: torch.Tensor | None = None


def _batch_pool(config: DemoConfig, gen: torch.Generator) -> list[SceneBatch]:
    """The fixed, seeded set of batches the run cycles through."""
    size = config.image_size
    return [make_batch(gen, config.batch_size, size, size) for _ in range(config.num_batches)]


def _batch_for(step: int, config: DemoConfig, pool: list[SceneBatch]) -> SceneBatch:
    """The batch of ``step``; at ``empty_sample_step`` its last sample loses every valid pixel."""
    batch = pool[step % len(pool)]
    if step == config.empty_sample_step:
        valid = batch.valid.clone()
        valid[-1] = False
        batch = SceneBatch(batch.image, batch.points, valid)
    return batch


def _guard(
    raw: torch.Tensor, config: DemoConfig, loss: LossOutput, monitor: MonitorLike | None
) -> torch.Tensor:
    """The original ×0 clip; through the monitor when there is one (same result, no sync)."""
    if monitor is not None:
        return monitor.clip_guard(raw, config.clip_loss, loss.components)
    if raw > config.clip_loss:  # a host sync, as in the original trainer
        return raw * 0.0
    return raw


def _forward(
    model: PointMapNet, batch: SceneBatch, config: DemoConfig, monitor: MonitorLike | None
) -> _StepOut:
    """Forward, loss and guard for one batch, reporting the risky tensors to the monitor."""
    out = model(batch.image)
    if monitor is not None:
        monitor.tensor("depth_raw", out["z_raw"], feeds_exp=uses_exp(model.activation))
        monitor.tensor("depth", out["depth"])
        monitor.tensor("local_points", out["local_points"])
    loss = pi3_loss(out["local_points"], batch.points, batch.valid)
    if monitor is not None:
        # The normalisation denominators: a 0 here is the empty-sample NaN about to happen.
        monitor.tensor("gt_scale", loss.gt_scale)
        monitor.tensor("valid_pixels", loss.valid_count)
    used = _guard(loss.total, config, loss, monitor)
    return _StepOut(raw=loss.total, used=used, loss=loss, z_raw=out["z_raw"].detach())


def _backward(model: PointMapNet, out: _StepOut, config: DemoConfig, want_post: bool) -> None:
    """Backward and grad clipping; keeps the pre-clip norm ``clip_grad_norm_`` returns."""
    torch.autograd.backward(out.used)
    params = list(model.parameters())
    out.grad_norm_pre = torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
    if want_post:  # measured, not inferred from the clip coefficient
        grads = [p.grad for p in params if p.grad is not None]
        out.grad_norm_post = torch.nn.utils.get_total_norm(grads)


def _spike(model: PointMapNet, shift: float) -> None:
    """The trigger: one bad update that raises log-depth everywhere by ``shift``."""
    with torch.no_grad():
        model.head_bias()[2] += shift


def _record(step: int, out: _StepOut, config: DemoConfig, lr: float) -> dict[str, float]:
    """Per-step python floats for tests and ``progress``.

    ``.item()`` forces a host sync; on this CPU-only demo there is no async stream to stall,
    and it only runs when ``record_history`` or ``progress`` asks for it.
    """
    rec = {
        "step": float(step),
        "loss_raw": out.raw.item(),
        "loss_used": out.used.item(),
        # NaN on an aborted step: backward never ran.
        "grad_norm_pre": float("nan") if out.grad_norm_pre is None else out.grad_norm_pre.item(),
        "lr": lr,
        "z_raw_max": out.z_raw.max().item(),
        "z_raw_mean": out.z_raw.mean().item(),
    }
    rec["clipped"] = float(rec["loss_raw"] > config.clip_loss and rec["loss_used"] == 0.0)
    rec.update({f"loss/{k}": v.item() for k, v in out.loss.components.items()})
    return rec


def _log(monitor: MonitorLike, step: int, out: _StepOut, lr: float) -> None:
    """End the step on the monitor; an aborted step has no gradients, reported as NaN."""
    grad_norm: torch.Tensor | float = float("nan")
    if out.grad_norm_pre is not None:
        grad_norm = out.grad_norm_pre
    monitor.log_step(
        step,
        loss=out.raw,
        loss_used=out.used,
        components=out.loss.components,
        grad_norm=grad_norm,
        grad_norm_post=out.grad_norm_post,
        lr=lr,
    )


def _run(
    config: DemoConfig,
    monitor: MonitorLike | None,
    progress: Progress | None,
    history: list[dict[str, float]],
) -> int:
    """The training loop; returns the number of steps run, raises ``NonFiniteLossError``."""
    torch.manual_seed(config.seed)  # model init
    gen = torch.Generator().manual_seed(config.seed)  # data
    model = PointMapNet(config.depth_activation)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    pool = _batch_pool(config, gen)
    want_record = config.record_history or progress is not None
    for step in range(config.steps):
        out = _forward(model, _batch_for(step, config, pool), config, monitor)
        finite = bool(torch.isfinite(out.used))  # the original abort check: one host sync
        if finite:
            optimizer.zero_grad()
            _backward(model, out, config, want_post=monitor is not None)
            optimizer.step()
        if monitor is not None:
            _log(monitor, step, out, config.lr)
        if want_record:
            rec = _record(step, out, config, config.lr)
            if config.record_history:
                history.append(rec)
            if progress is not None:
                progress(step, rec)
        if not finite:
            raise NonFiniteLossError(step, out.raw.item(), out.used.item())
        if step == config.spike_step:
            _spike(model, config.shift())
    return config.steps


def train(
    config: DemoConfig,
    monitor: MonitorLike | None = None,
    progress: Progress | None = None,
) -> DemoResult:
    """Run the demo; a non-finite loss ends it as ``status="crashed"`` instead of raising."""
    history: list[dict[str, float]] = []
    threads = torch.get_num_threads()
    if config.num_threads is not None:
        torch.set_num_threads(config.num_threads)
    try:
        steps = _run(config, monitor, progress, history)
    except NonFiniteLossError as err:
        # The aborted step counts: it ran forward and its loss was seen.
        return DemoResult("crashed", err.step + 1, str(err), history)
    finally:
        torch.set_num_threads(threads)
    return DemoResult("finished", steps, "", history)
