"""``Monitor``: the few calls a training loop makes. Each one only stages or enqueues.

    mon = Monitor(run="pi3-hospital", server="ws://gpu-box:8765", token=...)
    mon.tensor("depth_raw", z_raw, feeds_exp=True)        # during the step
    loss = mon.clip_guard(raw_loss, threshold=10.0, components=parts)
    mon.log_step(step, grad_norm=pre_clip_norm, lr=lr)    # ends the step
    mon.close()
"""

from __future__ import annotations

import atexit
import functools
import logging
import os
import platform
import socket
import sys
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeVar

import torch

from trainvitals.protocol import Record, RunEnd, RunStart, Step, check_name
from trainvitals.trainer_plugin.delivery.link import ingest_url as _ingest_url
from trainvitals.trainer_plugin.delivery.sender import DeliveryStats, make_sender
from trainvitals.trainer_plugin.values.clip import GuardSpec, OnNonFinite, guard_loss
from trainvitals.trainer_plugin.values.denominators import denominator_scalars
from trainvitals.trainer_plugin.values.devices import compiling
from trainvitals.trainer_plugin.values.micro import MicroBatches
from trainvitals.trainer_plugin.values.pending import PendingStep, TensorMeta
from trainvitals.trainer_plugin.values.staging import StepStaging
from trainvitals.trainer_plugin.values.stats import tensor_stats
from trainvitals.trainer_plugin.watch.modules import ModuleWatch
from trainvitals.trainer_plugin.watch.optimizer import UpdateWatch
from trainvitals.trainer_plugin.watch.registry import WatchSet
from trainvitals.trainer_plugin.watch.scaler import ScalerWatch

__all__ = ["CallTimes", "Monitor"]

log = logging.getLogger("trainvitals")
Number = torch.Tensor | float | int
F = TypeVar("F", bound=Callable[..., Any])
DEFAULT_SERVER = "ws://127.0.0.1:8765"
LATE_ORIGIN_WAIT_S = 5.0  # at close: most to wait for the sender to judge the last steps


def _timed(method: F) -> F:
    """Count the time spent inside a per-step call in ``Monitor.times`` (a plain wrapper: a
    context manager costs a few µs per call, a large share of a call on the CPU)."""

    @functools.wraps(method)
    def timed(self: Monitor, *args: Any, **kwargs: Any) -> Any:
        if compiling():  # no clock inside a torch.compile trace (it cannot be traced)
            return method(self, *args, **kwargs)
        sender = self._sender
        offline = sender is None or not sender.connected
        start = time.perf_counter()
        try:
            return method(self, *args, **kwargs)
        finally:
            self._count_call(time.perf_counter() - start, offline)

    return timed  # type: ignore[return-value]


@dataclass
class CallTimes:
    """Time spent inside the Monitor's per-step calls, measured by the Monitor itself.

    ``offline_calls`` / ``offline_max_s``: the calls that began or ended while no connection
    to the server was open (server down, unreachable, slow to answer, or offline mode) — they
    show that the training loop went on without the network.
    """

    calls: int = 0
    total_s: float = 0.0
    max_s: float = 0.0
    offline_calls: int = 0
    offline_max_s: float = 0.0


class Monitor:
    """Streams one process's view of a training run to a trainvitals server.

    ``server=None`` is offline mode: records go only to the spool, for ``trainvitals sync``
    later. ``token`` and ``server`` default to ``$TRAINVITALS_TOKEN`` and
    ``$TRAINVITALS_SERVER``; several servers, comma-separated (replicas on one database), are
    tried in order, moving to the next when one fails (failover). ``spool`` is the directory
    that keeps records until the server acknowledges them (default ``$TRAINVITALS_SPOOL`` or
    ``~/.cache/trainvitals/spool``; ``None`` keeps them in memory; ``server=None, spool=None``
    turns everything off), at most ``spool_bytes``. ``close()`` waits at most
    ``close_timeout`` seconds for the server.
    Rank and world size default to the ``RANK`` / ``WORLD_SIZE`` environment variables that
    torchrun and Accelerate set, else to an initialised ``torch.distributed`` (``mp.spawn``). Call
    ``close()`` (or use ``with Monitor(...)``) at the end; an atexit hook closes a forgotten one.
    """

    def __init__(
        self, run: str, server: str | None = "", token: str | None = None, *,
        config: Mapping[str, Any] | None = None, rank: int | None = None,
        world_size: int | None = None, queue_size: int = 10_000, close_timeout: float = 10.0,
        spool: str | os.PathLike[str] | None = "", spool_bytes: int = 256 << 20,
    ) -> None:
        self.run = check_name(run)
        self.rank = _from_env_or_dist("RANK", rank)
        self.world_size = _from_env_or_dist("WORLD_SIZE", world_size)
        self.session = uuid.uuid4().hex[:16]
        self.close_timeout = close_timeout
        self.times = CallTimes()
        self._seq = 0
        self._closed = False
        self._staging = StepStaging()
        self._micro = MicroBatches()
        self._watches = WatchSet(self._staging)
        self._tensors: dict[str, TensorMeta] = {}
        self._guard: tuple[GuardSpec, tuple[str, ...]] | None = None
        url = _ingest_url(os.environ.get("TRAINVITALS_SERVER", DEFAULT_SERVER)
                          if server == "" else server)
        token = os.environ.get("TRAINVITALS_TOKEN") if token is None else token
        self._sender = make_sender(url, token, (self.run, self.rank, self.session), spool=spool,
                                   spool_bytes=spool_bytes, queue_size=queue_size)
        self._send(RunStart(
            run=self.run, session=self.session, rank=self.rank, world_size=self.world_size,
            seq=0, time=time.time(), host=socket.gethostname(), pid=os.getpid(),
            config=dict(config or {}), versions=_versions(),
        ))
        atexit.register(self._close_at_exit)

    # ------------------------------------------------------------------ per-step calls

    @_timed
    def tensor(self, name: str, t: torch.Tensor, *, feeds_exp: bool = False) -> None:
        """Record statistics of ``t`` for this step (computed on its device, no host sync).

        ``feeds_exp=True`` marks a pre-activation that goes into ``exp``: its headroom to
        overflow for its dtype is recorded too.
        """
        _checked(name)
        stats = tensor_stats(t)
        seen = self._tensors.get(name)
        count = t.numel()
        if torch.is_grad_enabled():  # training: merged over the step's micro-batches
            merged = name in self._micro and seen is not None
            stats = self._micro.tensor(name, stats)
            count += seen.count if merged and seen is not None else 0
        self._staging.add(f"t/{name}", stats)  # (under no_grad, e.g. validation: the latest)
        self._tensors[name] = TensorMeta(count, t.dtype, feeds_exp)

    @_timed
    def clip_guard(
        self, loss: torch.Tensor, threshold: float,
        components: Mapping[str, Number] | None = None, *, on_nonfinite: OnNonFinite = "pass",
    ) -> torch.Tensor:
        """``loss * 0.0`` if ``loss > threshold`` else ``loss`` — and a recorded clip event.

        Replaces ``if loss > clip: loss = loss * 0.0`` with the same result, computed on the
        device. ``on_nonfinite``: ``"pass"`` keeps the old behaviour (NaN passes, +Inf becomes
        NaN); ``"zero"`` returns 0 for NaN/±Inf; ``"raise"`` raises ``NonFiniteLossError``
        (this one reads the loss on the host). The event is sent with the next ``log_step``.
        """
        used = guard_loss(loss, threshold, on_nonfinite)
        self._micro.loss(loss)
        self._staging.add("g/raw", loss)
        self._staging.add("g/used", used)
        names = self._stage_map("gc", components)
        self._guard = (GuardSpec(float(threshold), on_nonfinite), names)
        return used

    @_timed
    def log_step(
        self, step: int, *, loss: Number | None = None, loss_used: Number | None = None,
        components: Mapping[str, Number] | None = None, grad_norm: Number | None = None,
        grad_norm_post: Number | None = None, lr: Number | None = None,
        scalars: Mapping[str, Number] | None = None,
    ) -> None:
        """End step ``step``: everything staged since the last call is sent as one record.

        Values may be 0-d tensors (read later, without a sync) or numbers. ``loss`` is the raw
        loss, ``loss_used`` what was backpropagated, ``grad_norm`` the norm *before* clipping
        (what ``clip_grad_norm_`` returns). After ``clip_guard``, loss and loss_used default
        to what the guard saw and returned.
        """
        if isinstance(step, bool) or not isinstance(step, int):
            raise TypeError(f"step must be an int, got {type(step).__name__}")
        for key, value in (("loss", loss), ("loss_used", loss_used), ("grad_norm", grad_norm),
                           ("grad_norm_post", grad_norm_post), ("lr", lr)):
            if value is not None:
                self._staging.add(key, _scalar(key, value))
        component_names = self._stage_map("c", components)
        micro = self._micro.scalars()
        scalar_names = self._stage_map("s", {**micro, **(scalars or {})})
        self._micro.reset()
        self._end_step(step, component_names, scalar_names)

    @torch.compiler.disable  # type: ignore[untyped-decorator]
    def _end_step(self, step: int, component_names: tuple[str, ...],
                  scalar_names: tuple[str, ...]) -> None:
        """The host half of ``log_step``: seal the staging and queue the record. Never traced:
        inside a compiled function it is the one graph break ``log_step`` costs (the values
        were staged inside the graph)."""
        self._seq += 1
        watched = self._watches.seal(step)  # before the staging is sealed: it stages too
        pending = PendingStep(
            run=self.run, session=self.session, rank=self.rank, seq=self._seq, step=step,
            time=time.time(), values=self._staging.seal(), tensors=self._tensors,
            components=component_names, scalars=scalar_names, guard=self._guard,
            watch=watched,
        )
        self._tensors, self._guard = {}, None
        self._send(pending)

    # ------------------------------------------------------------------ watches

    def watch(self, model: torch.nn.Module, *, name: str = "model", op_trace: bool = False,
              trace_window: int = 4) -> ModuleWatch:
        """Find where NaN/Inf start: hooks on ``model``, its modules and its parameters.

        When an output of ``model`` or a gradient goes non-finite, the step record names the
        first module (execution order) whose output went non-finite from finite inputs and the
        first parameter (backward order) with a non-finite gradient. On CUDA every module's
        inputs and outputs and every gradient are reduced on the device every step; on the
        CPU only the model's inputs, outputs and gradients are checked every step, and a step
        that starts a run of non-finite steps is re-run at once with every module hooked
        (same RNG state, no gradients, buffers put back; a forward with other side effects
        makes them twice). ``op_trace=True`` keeps references to the last ``trace_window``
        steps' inputs and,
        once per run, re-runs the first such step's forward under an op tracer to name the op
        and source line. ``remove()`` on the result takes the hooks off.
        """
        return self._watches.watch(model, name=check_name(name), op_trace=op_trace,
                                   trace_window=trace_window)

    def watch_scaler(self, scaler: Any, *,
                     after_update: Callable[[], None] | None = None) -> ScalerWatch:
        """Record what a mixed-precision ``torch.amp.GradScaler`` does each step: the scale
        (``amp/scale``) and whether it skipped the optimizer step for Inf/NaN gradients
        (``amp/skipped``). A skipped step is how a GradScaler finds its scale — the server
        does not call it an incident; skipping that persists, or a scale that collapses, is
        one. ``remove()`` on the returned handle stops it. ``after_update`` is called after
        each ``scaler.update()`` (adapters end a skipped step there)."""
        return ScalerWatch(scaler, self._watches.scalar, after_update)

    def watch_optimizer(self, optimizer: torch.optim.Optimizer,
                        model: torch.nn.Module | None = None, *, every: int = 1) -> UpdateWatch:
        """Per step: ‖Δθ‖/‖θ‖, dead and frozen parameter counts per top-level module of
        ``model`` (per parameter group without it) and each group's learning rate, as
        scalars ``update/<m>``, ``dead_grads/<m>``, ``trainable/<m>``, ``frozen/<m>``,
        ``lr/group<i>``. ``every=k`` measures every k-th optimizer step only."""
        return self._watches.watch_optimizer(optimizer, model, every=every)

    @_timed
    def denominator(self, name: str, value: Number, *, valid_count: Number | None = None,
                    eps: float = 1e-6) -> None:
        """Record a normalisation denominator (smallest |value|) and, optionally, valid-pixel
        counts per sample, for the server's degenerate-normalisation alert (no sync)."""
        for key, item in denominator_scalars(check_name(name), value, valid_count,
                                             eps).items():
            self._watches.scalar(key, item)

    # ------------------------------------------------------------------ lifecycle

    def flush(self, timeout: float = 10.0) -> bool:
        """Block until the server has committed everything sent so far (offline: until it is
        all in the spool); False on timeout."""
        return True if self._sender is None else self._sender.flush(timeout)

    def stats(self) -> DeliveryStats:
        """Delivery counters: submitted, sent, acknowledged, dropped, connection state."""
        return DeliveryStats() if self._sender is None else self._sender.stats()

    def close(self, status: str = "finished", reason: str = "",
              timeout: float | None = None) -> DeliveryStats:
        """End the run and deliver what is queued, waiting at most ``timeout`` seconds."""
        if self._closed:
            return self.stats()
        self._closed = True
        atexit.unregister(self._close_at_exit)
        self._send_unfinished_step()
        self._send_late_origins(timeout)
        self._seq += 1
        self._send(RunEnd(run=self.run, session=self.session, rank=self.rank, seq=self._seq,
                          time=time.time(), status="crashed" if status == "crashed" else "finished",
                          reason=reason, dropped=self.stats().dropped))
        if self._sender is None:
            return self.stats()
        # The sender says what, if anything, stayed in the spool and how to send it.
        return self._sender.close(self.close_timeout if timeout is None else timeout)

    def __enter__(self) -> Monitor:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc is None:
            self.close()
        else:
            self.close(status="crashed", reason=f"{type(exc).__name__}: {exc}"[:500])

    def _close_at_exit(self) -> None:
        self.close(status="crashed", reason="process exited without Monitor.close()")

    def _send_unfinished_step(self) -> None:
        """A trainer that stops mid-step (it raises at a NaN loss before ``log_step``) leaves
        what it staged — tensor statistics, the clip event, the watch's values — unsent: end
        that step with it, numbered after the last, so the step that went wrong is seen."""
        unfinished = bool(self._tensors) or self._guard is not None or len(self._staging) > 0 \
            or self._watches.recorded()
        if unfinished:
            last = self._watches.last_step
            self.log_step(0 if last is None else last + 1)

    def _send_late_origins(self, timeout: float | None) -> None:
        """Origins that no step record will carry (the trainer stopped at its first non-finite
        step, before the op-level trace ran) go in value-less records of their own."""
        if self._sender is None:
            return
        wait = min(LATE_ORIGIN_WAIT_S, self.close_timeout if timeout is None else timeout)
        for origin in self._watches.finish(wait):
            self._seq += 1
            self._send(Step(run=self.run, session=self.session, seq=self._seq, rank=self.rank,
                            step=self._watches.last_step or 0, time=time.time(), origin=origin))

    # ------------------------------------------------------------------ helpers

    def _send(self, item: PendingStep | Record) -> None:
        if self._sender is not None:
            self._sender.submit(item)  # the spool numbers records as it keeps them

    def _stage_map(self, prefix: str, values: Mapping[str, Number] | None) -> tuple[str, ...]:
        if not values:
            return ()
        for name, value in values.items():
            _checked(name)
            self._staging.add(f"{prefix}/{name}", _scalar(name, value))
        return tuple(values)

    def _count_call(self, spent: float, offline: bool) -> None:
        times = self.times
        times.calls += 1
        times.total_s += spent
        times.max_s = max(times.max_s, spent)
        if offline or self._sender is None or not self._sender.connected:
            times.offline_calls += 1
            times.offline_max_s = max(times.offline_max_s, spent)


def _checked(name: str) -> str:
    """``check_name``, remembered for the few names a training loop repeats every step."""
    if type(name) is not str or compiling():  # no lru_cache inside a torch.compile trace
        return check_name(name)
    return _valid_name(name)


@functools.lru_cache(maxsize=4096)
def _valid_name(name: str) -> str:
    return check_name(name)  # a bad name raises and is not remembered


def _scalar(name: str, value: Number) -> Number:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:  # numel is known on the host: checking it costs no sync
            raise ValueError(f"{name!r} must be a single value, got a tensor of shape "
                             f"{tuple(value.shape)}")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name!r} must be a number or a 0-d tensor, got {type(value).__name__}")
    return value


def _from_env_or_dist(variable: str, given: int | None) -> int:
    """``given``, else ``$RANK``/``$WORLD_SIZE``, else the initialised process group's, else
    rank 0 of 1 (``mp.spawn`` jobs set no environment variables)."""
    if given is not None:
        return given
    if variable in os.environ:
        return int(os.environ[variable])
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() if variable == "RANK" else dist.get_world_size()
    return 0 if variable == "RANK" else 1


def _versions() -> dict[str, str]:
    from trainvitals import __version__

    return {"trainvitals": __version__, "torch": torch.__version__,
            "python": platform.python_version(), "platform": sys.platform}
