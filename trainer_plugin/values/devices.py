"""Where the training thread may read a tensor's value at once, and where it must not.

On a CPU tensor the value is computed by the time the op returns: reading it (``.item()``,
``.tolist()``) waits for nothing, and a host-side ``if`` is the cheapest way to skip work. On
CUDA — and the other asynchronous backends (MPS, XLA, …) — a read waits for every kernel
queued before it: the stall the plugin must never cause. Code with a cheaper way for the
first kind asks ``reads_now(device)``; everything else keeps its values on the device until
the step's single transfer (``trainvitals.trainer_plugin.values.staging``).
"""

from __future__ import annotations

import torch

__all__ = ["READ_NOW", "reads_now"]

# Device types whose values the training thread reads at once. The no-sync tests empty it,
# so that CPU tensors take the same path as CUDA tensors there.
READ_NOW = frozenset({"cpu"})


def reads_now(where: torch.device | torch.Tensor) -> bool:
    """Whether reading a value on ``where`` (a device, or a tensor's) now costs the training
    nothing (no stream to wait for)."""
    if isinstance(where, torch.Tensor):
        if where.is_cpu:  # a property read: cheaper than building the device object
            return "cpu" in READ_NOW
        where = where.device
    return where.type in READ_NOW
