"""The training steps the overhead benchmarks time, and the ways of monitoring them.

Two workloads: the demo's π³-style point-map net (``trainvitals.demo``) and a larger conv net
classifier. Each step reports the same signals to whichever ``Logger`` is plugged in: three
watched tensors, the guarded loss with its two components, the pre-clip gradient norm and the
learning rate. Loggers are the variants compared: nothing, naive ``.item()`` statistics alone,
TensorBoard, wandb (offline) and trainvitals (statistics only, or sent to a server).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import tempfile
import time
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from trainvitals.demo.loss import pi3_loss
from trainvitals.demo.model import PointMapNet, uses_exp
from trainvitals.demo.scenes import SceneBatch, make_batch
from trainvitals.demo.train import DemoConfig

__all__ = ["LOGGERS", "Logger", "Workload", "describe", "has_watch", "make_logger", "make_workload",
           "peer_versions"]

Watched = Mapping[str, tuple[torch.Tensor, bool]]  # name -> (tensor, feeds_exp)


# ----------------------------------------------------------------------------- loggers


class Logger:
    """No monitoring: the original trainer's ``if loss > clip: loss = loss * 0.0`` guard.

    Subclasses add monitoring. ``inside_ns`` accumulates the time spent in the logging calls
    (guard included), so every variant is measured the same way.
    """

    name = "none"
    logs = "nothing"

    def __init__(self, *, device: torch.device) -> None:
        self.device = device
        self.inside_ns = 0
        self.steps = 0

    def setup(self, model: nn.Module, run: str) -> None:
        """Called once before the first step."""

    def tensors(self, watched: Watched) -> None:
        """The step's tensors at risky points."""

    def guard(self, raw: torch.Tensor, threshold: float,
              components: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The loss to backpropagate."""
        if self.device.type == "cuda":  # the sync-free form, so the GPU baseline never waits
            return torch.where(raw > threshold, raw * 0.0, raw)
        return raw * 0.0 if raw > threshold else raw  # the original trainer's guard

    def end(self, step: int, raw: torch.Tensor, used: torch.Tensor,
            components: Mapping[str, torch.Tensor], grad_norm: torch.Tensor, lr: float) -> None:
        """The step is over."""

    def close(self) -> str:
        """Finish; a line saying what was delivered (empty when there is nothing to say)."""
        return ""


class NaiveStats(Logger):
    """What a typical user writes: each statistic read with ``.item()``, 18 values a step."""

    name = "naive .item() stats, not logged"
    logs = "18 values computed with .item()"

    def tensors(self, watched: Watched) -> None:
        self._watched = watched

    def end(self, step: int, raw: torch.Tensor, used: torch.Tensor,
            components: Mapping[str, torch.Tensor], grad_norm: torch.Tensor, lr: float) -> None:
        values = {"loss/raw": raw.item(), "loss/used": used.item()}
        values.update({f"loss/{k}": v.item() for k, v in components.items()})
        values["grad_norm"] = grad_norm.item()
        values["lr"] = lr
        for name, (t, _) in self._watched.items():
            values[f"{name}/min"] = t.min().item()
            values[f"{name}/max"] = t.max().item()
            values[f"{name}/mean"] = t.mean().item()
            values[f"{name}/nonfinite"] = (~torch.isfinite(t)).sum().item()
        self.emit(step, values)

    def emit(self, step: int, values: dict[str, float]) -> None:
        """Hand the values to the logging library."""


class TensorBoard(NaiveStats):
    """``SummaryWriter.add_scalar`` for each of the 18 values."""

    name = "TensorBoard SummaryWriter"
    logs = "18 values (.item()) via add_scalar"

    def setup(self, model: nn.Module, run: str) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self._dir = tempfile.TemporaryDirectory(prefix="bench-tb-")
        self._writer = SummaryWriter(self._dir.name)

    def emit(self, step: int, values: dict[str, float]) -> None:
        for key, value in values.items():
            self._writer.add_scalar(key, value, step)

    def close(self) -> str:
        self._writer.close()
        self._dir.cleanup()
        return ""


class Wandb(NaiveStats):
    """``wandb.log`` of the 18 values in offline mode (``WANDB_MODE=offline``)."""

    name = "wandb (offline)"
    logs = "18 values (.item()) via wandb.log"

    def setup(self, model: nn.Module, run: str) -> None:
        import wandb

        os.environ["WANDB_MODE"] = "offline"
        os.environ.setdefault("WANDB_SILENT", "true")
        self._dir = tempfile.TemporaryDirectory(prefix="bench-wandb-")
        self._run = wandb.init(project="trainvitals-bench", name=run, dir=self._dir.name,
                               mode="offline", reinit="create_new",
                               settings=wandb.Settings(silent=True, console="off"))

    def emit(self, step: int, values: dict[str, float]) -> None:
        self._run.log(values, step=step)

    def close(self) -> str:
        self._run.finish()
        self._dir.cleanup()
        return ""


class TrainVitals(Logger):
    """The plugin: three ``tensor`` calls, ``clip_guard`` and ``log_step`` (see the README).

    ``spool``: ``"tmp"`` a spool directory of its own (the default behaviour, kept out of
    ``~/.cache``), ``None`` the in-memory spool. ``server=None`` with ``spool=None`` is
    statistics only: computed and staged on the training thread, never encoded or sent.
    """

    def __init__(self, *, device: torch.device, server: str | None, token: str | None = None,
                 watch: bool = False, spool: str | None = "tmp") -> None:
        super().__init__(device=device)
        self._server, self._token, self._watch, self._spool = server, token, watch, spool
        if server is None:
            self.name = "trainvitals, statistics only (server=None, spool=None)"
            self.logs = "3 tensors × 7 stats + guard + 6 values, on device; not sent"
        elif spool is None:
            self.name = "trainvitals → server, in-memory spool"
            self.logs = "the same, sent to the server subprocess; spool=None"
        else:
            self.name = "trainvitals + watch(model) → server" if watch else "trainvitals → server"
            self.logs = ("the same, sent; spool on disk (the default)" +
                         ("; watch(model): every module on CUDA, model and gradients on CPU"
                          if watch else ""))

    def setup(self, model: nn.Module, run: str) -> None:
        from trainvitals import Monitor

        spool: str | None = None
        if self._spool == "tmp":
            self._spool_dir = tempfile.TemporaryDirectory(prefix="bench-spool-")
            spool = self._spool_dir.name
        self.monitor = Monitor(run, server=self._server, token=self._token,
                               spool=spool)
        if self._watch:
            self.monitor.watch(model)

    def tensors(self, watched: Watched) -> None:
        for name, (t, feeds_exp) in watched.items():
            self.monitor.tensor(name, t, feeds_exp=feeds_exp)

    def guard(self, raw: torch.Tensor, threshold: float,
              components: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self.monitor.clip_guard(raw, threshold, components)

    def end(self, step: int, raw: torch.Tensor, used: torch.Tensor,
            components: Mapping[str, torch.Tensor], grad_norm: torch.Tensor, lr: float) -> None:
        self.monitor.log_step(step, components=components, grad_norm=grad_norm, lr=lr)

    def close(self) -> str:
        stats = self.monitor.close(timeout=60)
        if self._spool == "tmp":
            self._spool_dir.cleanup()
        if self._server is None:
            return ""
        acked = max(stats.acked.values(), default=0)
        return (f"{self.name}: {stats.submitted} records submitted, acknowledged up to seq "
                f"{acked}, {stats.dropped} dropped")


def make_logger(kind: str, device: torch.device, server: str | None, token: str | None
                ) -> Logger:
    """A fresh logger of one kind (see ``LOGGERS``)."""
    makers: dict[str, Callable[[], Logger]] = {
        "none": lambda: Logger(device=device),
        "naive": lambda: NaiveStats(device=device),
        "tensorboard": lambda: TensorBoard(device=device),
        "wandb": lambda: Wandb(device=device),
        "tv_stats": lambda: TrainVitals(device=device, server=None, spool=None),
        "tv_memory": lambda: TrainVitals(device=device, server=server, token=token, spool=None),
        "tv_server": lambda: TrainVitals(device=device, server=server, token=token),
        "tv_watch": lambda: TrainVitals(device=device, server=server, token=token, watch=True),
    }
    return makers[kind]()


LOGGERS = ("none", "naive", "tensorboard", "wandb", "tv_stats", "tv_memory", "tv_server",
           "tv_watch")


def has_watch() -> bool:
    """Whether the plugin has ``Monitor.watch`` yet."""
    from trainvitals import Monitor

    return hasattr(Monitor, "watch")


def peer_versions() -> dict[str, str]:
    """Versions of torch and the peers compared against."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"torch": str(torch.__version__)}
    for name in ("trainvitals", "tensorboard", "wandb"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


# ----------------------------------------------------------------------------- workloads


@dataclasses.dataclass
class Workload:
    """A model, its optimizer and a fixed pool of batches; ``step`` trains on one batch."""

    name: str
    description: str
    model: nn.Module
    optimizer: torch.optim.Optimizer
    forward: Callable[[int], tuple[Watched, torch.Tensor, dict[str, torch.Tensor]]]
    threshold: float
    max_grad_norm: float
    device: torch.device

    def step(self, step: int, logger: Logger) -> None:
        """One training step, reporting through ``logger`` (its calls are timed)."""
        clock = time.perf_counter_ns
        watched, raw, components = self.forward(step)
        t0 = clock()
        logger.tensors(watched)
        used = logger.guard(raw, self.threshold, components)
        t1 = clock()
        self.optimizer.zero_grad()
        used.backward()  # type: ignore[no-untyped-call, unused-ignore]
        params = [p for p in self.model.parameters() if p.grad is not None]
        grad_norm = torch.nn.utils.clip_grad_norm_(params, self.max_grad_norm)
        self.optimizer.step()
        lr = float(self.optimizer.param_groups[-1]["lr"])
        t2 = clock()
        logger.end(step, raw, used, components, grad_norm, lr)
        logger.inside_ns += (t1 - t0) + (clock() - t2)
        logger.steps += 1


@functools.cache
def _demo_pool(device: str) -> list[SceneBatch]:
    """The demo's seeded batches; drawn once per process and shared (they are only read)."""
    config = DemoConfig()
    gen = torch.Generator().manual_seed(config.seed)
    size = config.image_size
    pool = [make_batch(gen, config.batch_size, size, size) for _ in range(config.num_batches)]
    return [dataclasses.replace(b, image=b.image.to(device), points=b.points.to(device),
                                valid=b.valid.to(device)) for b in pool]


def _compiled(model: nn.Module, compiled: bool) -> Callable[..., Any]:
    """What the training step calls: the module, or ``torch.compile`` of it (default
    settings). Hooks and watches go on the module itself, as a user puts them."""
    return torch.compile(model) if compiled else model


def _demo(device: torch.device, compiled: bool = False) -> Workload:
    config = DemoConfig()  # the demo's defaults; no spike is ever applied here
    torch.manual_seed(config.seed)
    model = PointMapNet(config.depth_activation).to(device)  # as demo.train builds it
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr,
                                  weight_decay=config.weight_decay)
    pool = _demo_pool(str(device))
    feeds_exp = uses_exp(config.depth_activation)
    net = _compiled(model, compiled)

    def forward(step: int) -> tuple[Watched, torch.Tensor, dict[str, torch.Tensor]]:
        batch = pool[step % len(pool)]
        out = net(batch.image)
        watched = {"depth_raw": (out["z_raw"], feeds_exp), "depth": (out["depth"], False),
                   "local_points": (out["local_points"], False)}
        loss = pi3_loss(out["local_points"], batch.points, batch.valid)
        return watched, loss.total, loss.components

    return Workload("demo", DESCRIPTIONS["demo"], model, optimizer, forward, config.clip_loss,
                    config.max_grad_norm, device)


class ConvNet(nn.Module):
    """A small BatchNorm conv net classifier (about 2× the demo's step on a CPU)."""

    def __init__(self, width: int = 16, classes: int = 10) -> None:
        super().__init__()
        w = width
        self.stem = nn.Sequential(nn.Conv2d(3, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU())
        self.body = nn.Sequential(
            nn.Conv2d(w, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(),
            nn.Conv2d(w, 2 * w, 3, stride=2, padding=1), nn.BatchNorm2d(2 * w), nn.ReLU(),
            nn.Conv2d(2 * w, 2 * w, 3, padding=1), nn.BatchNorm2d(2 * w), nn.ReLU(),
            nn.Conv2d(2 * w, 4 * w, 3, stride=2, padding=1), nn.BatchNorm2d(4 * w), nn.ReLU())
        self.head = nn.Linear(4 * w, classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        stem = self.stem(x)
        features = self.body(stem).mean(dim=(2, 3))
        return stem, features, self.head(features)


def _convnet(device: torch.device, compiled: bool = False) -> Workload:
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    model = ConvNet().to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    pool = [(torch.randn(16, 3, 32, 32, generator=gen).to(device),
             torch.randint(0, 10, (16,), generator=gen).to(device)) for _ in range(16)]
    net = _compiled(model, compiled)

    def forward(step: int) -> tuple[Watched, torch.Tensor, dict[str, torch.Tensor]]:
        images, labels = pool[step % len(pool)]
        stem, features, logits = net(images)
        components = {"ce": F.cross_entropy(logits, labels),
                      "feature_l2": 1e-3 * features.pow(2).mean()}
        total = torch.stack(list(components.values())).sum()
        watched = {"stem": (stem, False), "features": (features, False),
                   "logits": (logits, True)}
        return watched, total, components

    return Workload("convnet", DESCRIPTIONS["convnet"], model, optimizer, forward, 10.0, 1.0,
                    device)


WORKLOADS: dict[str, Callable[[torch.device, bool], Workload]] = {"demo": _demo,
                                                                  "convnet": _convnet}
DESCRIPTIONS = {
    "demo": "the demo's PointMapNet + π³ loss (DemoConfig defaults: batch 8×3×32², AdamW), "
            "watching depth_raw (feeds exp), depth, local_points; components points, normal",
    "convnet": "5-layer BatchNorm conv net classifier, batch 16×3×32², AdamW, watching stem, "
               "features, logits; components ce, feature_l2",
}


def make_workload(name: str, device: torch.device | str = "cpu", *,
                  compiled: bool = False) -> Workload:
    """A fresh workload (same seed, same initial weights every time); ``compiled``: its model
    runs under ``torch.compile``."""
    return WORKLOADS[name](torch.device(device), compiled)


def describe(workloads: list[str]) -> list[str]:
    """Header lines describing the workloads."""
    return [f"workload {name}: {DESCRIPTIONS[name]}" for name in workloads]
