"""Where the training thread may read a tensor's value at once, and where it must not.

On a CPU tensor the value is computed by the time the op returns: reading it (``.item()``,
``.tolist()``) waits for nothing, and a host-side ``if`` is the cheapest way to skip work. On
CUDA — and the other asynchronous backends (MPS, XLA, …) — a read waits for every kernel
queued before it: the stall the plugin must never cause. Code with a cheaper way for the
first kind asks ``reads_now(device)``; everything else keeps its values on the device until
the step's single transfer (``trainvitals.trainer_plugin.values.staging``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import torch
import torch._dynamo.eval_frame

F = TypeVar("F", bound=Callable[..., Any])

__all__ = ["READ_NOW", "compiling", "eager_when_alone", "local", "reads_now"]

# Device types whose values the training thread reads at once. The no-sync tests empty it,
# so that CPU tensors take the same path as CUDA tensors there.
READ_NOW = frozenset({"cpu"})


def compiling() -> bool:
    """Whether this code is being traced by ``torch.compile`` (Dynamo): then nothing may be
    read on the host (``.item()`` breaks the graph), whatever the device."""
    return bool(torch.compiler.is_compiling())


def eager_when_alone(function: F) -> F:
    """Mark a hook so that ``torch.compile`` never compiles it as a frame of its own, yet traces
    it when a compiled frame calls it.

    ``torch.compile(model)`` runs a module's hooks as frames of their own and compiles each
    into a separate graph (a model with any hook is then several graphs, not one): such a frame
    is run eagerly instead, where reading values is free again (``compiling()`` is False).
    Inside a compiled training step Dynamo inlines the module call with its hooks, and the hook
    is traced (``compiling()`` is True: it must be traceable then). Uses Dynamo's frame
    execution strategy (what ``torch.compiler.disable`` sets, without the mark that would make
    an inlined call a graph break); a torch without it: no-op.
    """
    code = getattr(function, "__code__", None)
    setter = getattr(torch._dynamo.eval_frame, "set_code_exec_strategy", None)
    action = getattr(torch._dynamo.types, "FrameAction", None)
    strategy = getattr(torch._dynamo.types, "FrameExecStrategy", None)
    if code is not None and setter is not None and action is not None and strategy is not None:
        # SKIP this frame and what it calls (the watch's helpers would otherwise be compiled
        # as frames of their own); an inlined call is traced all the same.
        setter(code, strategy(action.SKIP, action.SKIP))
    return function


def local(t: torch.Tensor) -> torch.Tensor:
    """The part of ``t`` this process holds: a DTensor's local shard (FSDP2's ``fully_shard``,
    tensor parallelism), which is read without a collective — statistics of a sharded tensor
    are then this rank's shard's; any other tensor as it is. (Reading the DTensor itself would
    run collectives inside our hooks: a sync, and a hang if the ranks disagree.)"""
    to_local = getattr(t, "to_local", None)
    return to_local() if to_local is not None and hasattr(t, "placements") else t


def reads_now(where: torch.device | torch.Tensor) -> bool:
    """Whether reading a value on ``where`` (a device, or a tensor's) now costs the training
    nothing (no stream to wait for). Never inside a ``torch.compile`` trace: there every
    value stays a tensor of the graph, as on CUDA."""
    if compiling():
        return False
    if isinstance(where, torch.Tensor):
        if where.is_cpu:  # a property read: cheaper than building the device object
            return "cpu" in READ_NOW
        where = where.device
    return where.type in READ_NOW
