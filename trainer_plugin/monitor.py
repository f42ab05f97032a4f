"""``Monitor``: the few calls a training loop makes. Each one only stages or enqueues.

    mon = Monitor(run="pi3-hospital", server="ws://gpu-box:8765", token=...)
    mon.tensor("depth_raw", z_raw, feeds_exp=True)        # during the step
    loss = mon.clip_guard(raw_loss, threshold=10.0, components=parts)
    mon.log_step(step, grad_norm=pre_clip_norm, lr=lr)    # ends the step
    mon.close()
"""

from __future__ import annotations

import atexit
import logging
import os
import platform
import socket
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeVar

import torch

from trainvitals.protocol import Record, RunEnd, RunStart, check_name
from trainvitals.trainer_plugin.clip import GuardSpec, OnNonFinite, guard_loss
from trainvitals.trainer_plugin.pending import PendingStep, TensorMeta
from trainvitals.trainer_plugin.sender import DeliveryStats, Sender
from trainvitals.trainer_plugin.staging import StepStaging
from trainvitals.trainer_plugin.stats import stats_vector

__all__ = ["CallTimes", "Monitor"]

log = logging.getLogger("trainvitals")
Number = torch.Tensor | float | int
F = TypeVar("F", bound=Callable[..., Any])
DEFAULT_SERVER = "ws://127.0.0.1:8765"


@dataclass
class CallTimes:
    """Time spent inside the Monitor's per-step calls, measured by the Monitor itself."""

    calls: int = 0
    total_s: float = 0.0
    max_s: float = 0.0


class Monitor:
    """Streams one process's view of a training run to a trainvitals server.

    ``server=None`` disables sending (calls stay cheap no-ops). ``token`` and ``server`` default
    to ``$TRAINVITALS_TOKEN`` and ``$TRAINVITALS_SERVER``. Rank and world size default to the
    ``RANK`` / ``WORLD_SIZE`` environment variables that torchrun and Accelerate set. Call
    ``close()`` (or use ``with Monitor(...)``) at the end; an atexit hook closes a forgotten one.
    """

    def __init__(
        self, run: str, server: str | None = "", token: str | None = None, *,
        config: Mapping[str, Any] | None = None, rank: int | None = None,
        world_size: int | None = None, queue_size: int = 10_000, close_timeout: float = 10.0,
    ) -> None:
        self.run = check_name(run)
        self.rank = int(os.environ.get("RANK", 0)) if rank is None else rank
        self.world_size = int(os.environ.get("WORLD_SIZE", 1)) if world_size is None else world_size
        self.session = uuid.uuid4().hex[:16]
        self.close_timeout = close_timeout
        self.times = CallTimes()
        self._seq = 0
        self._closed = False
        self._staging = StepStaging()
        self._tensors: dict[str, TensorMeta] = {}
        self._guard: tuple[GuardSpec, tuple[str, ...]] | None = None
        url = _ingest_url(os.environ.get("TRAINVITALS_SERVER", DEFAULT_SERVER)
                          if server == "" else server)
        token = os.environ.get("TRAINVITALS_TOKEN") if token is None else token
        self._sender = None if url is None else Sender(url, token, queue_size=queue_size)
        self._send(RunStart(
            run=self.run, session=self.session, rank=self.rank, world_size=self.world_size,
            seq=0, time=time.time(), host=socket.gethostname(), pid=os.getpid(),
            config=dict(config or {}), versions=_versions(),
        ))
        atexit.register(self._close_at_exit)

    # ------------------------------------------------------------------ per-step calls

    def tensor(self, name: str, t: torch.Tensor, *, feeds_exp: bool = False) -> None:
        """Record statistics of ``t`` for this step (computed on its device, no host sync).

        ``feeds_exp=True`` marks a pre-activation that goes into ``exp``: its headroom to
        overflow for its dtype is recorded too.
        """
        with self._timed():
            check_name(name)
            self._staging.add(f"t/{name}", stats_vector(t))
            self._tensors[name] = TensorMeta(t.numel(), t.dtype, feeds_exp)

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
        with self._timed():
            used = guard_loss(loss, threshold, on_nonfinite)
            self._staging.add("g/raw", loss)
            self._staging.add("g/used", used)
            names = self._stage_map("gc", components)
            self._guard = (GuardSpec(float(threshold), on_nonfinite), names)
            return used

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
        with self._timed():
            if isinstance(step, bool) or not isinstance(step, int):
                raise TypeError(f"step must be an int, got {type(step).__name__}")
            for key, value in (("loss", loss), ("loss_used", loss_used), ("grad_norm", grad_norm),
                               ("grad_norm_post", grad_norm_post), ("lr", lr)):
                if value is not None:
                    self._staging.add(key, _scalar(key, value))
            component_names = self._stage_map("c", components)
            scalar_names = self._stage_map("s", scalars)
            self._seq += 1
            pending = PendingStep(
                run=self.run, session=self.session, rank=self.rank, seq=self._seq, step=step,
                time=time.time(), values=self._staging.seal(), tensors=self._tensors,
                components=component_names, scalars=scalar_names, guard=self._guard,
            )
            self._tensors, self._guard = {}, None
            self._send(pending)

    # ------------------------------------------------------------------ lifecycle

    def flush(self, timeout: float = 10.0) -> bool:
        """Block until the server has committed everything sent so far; False on timeout."""
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
        self._seq += 1
        self._send(RunEnd(run=self.run, session=self.session, rank=self.rank, seq=self._seq,
                          time=time.time(), status="crashed" if status == "crashed" else "finished",
                          reason=reason, dropped=self.stats().dropped))
        if self._sender is None:
            return self.stats()
        stats = self._sender.close(self.close_timeout if timeout is None else timeout)
        if stats.dropped or not self._sender.flush(0):
            log.warning("trainvitals: run %r closed with %d record(s) dropped or unacknowledged "
                        "(%s)", self.run, stats.dropped, stats.last_error or "server slow")
        return stats

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

    # ------------------------------------------------------------------ helpers

    def _send(self, item: PendingStep | Record) -> None:
        if self._sender is not None:
            self._sender.submit(item, (self.run, self.rank, self.session), item.seq)

    def _stage_map(self, prefix: str, values: Mapping[str, Number] | None) -> tuple[str, ...]:
        if not values:
            return ()
        for name, value in values.items():
            check_name(name)
            self._staging.add(f"{prefix}/{name}", _scalar(name, value))
        return tuple(values)

    @contextmanager
    def _timed(self) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            spent = time.perf_counter() - start
            self.times.calls += 1
            self.times.total_s += spent
            self.times.max_s = max(self.times.max_s, spent)


def _scalar(name: str, value: Number) -> Number:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:  # numel is known on the host: checking it costs no sync
            raise ValueError(f"{name!r} must be a single value, got a tensor of shape "
                             f"{tuple(value.shape)}")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name!r} must be a number or a 0-d tensor, got {type(value).__name__}")
    return value


def _ingest_url(server: str | None) -> str | None:
    if not server:
        return None
    url = server.rstrip("/")
    for plain, secure in (("http://", "ws://"), ("https://", "wss://")):
        if url.startswith(plain):
            url = secure + url[len(plain):]
    if not url.startswith(("ws://", "wss://")):
        url = "ws://" + url
    return url if url.endswith("/ws/ingest") else url + "/ws/ingest"


def _versions() -> dict[str, str]:
    from trainvitals import __version__

    return {"trainvitals": __version__, "torch": torch.__version__,
            "python": platform.python_version(), "platform": sys.platform}
