"""One step's device values, gathered and brought to the host in a single transfer.

During a step, values (0-d tensors such as the loss, and ``stats_vector`` outputs) are added to
a ``StepStaging``. ``seal()`` concatenates them per device and starts one copy to the host:
on CUDA a non-blocking copy into pinned memory followed by an event, so the training stream is
never synchronised. The sender thread later calls ``PendingValues.wait()`` and reads floats.

Values on a device where reading stalls nothing (the CPU, see
``trainvitals.trainer_plugin.values.devices``) are read when added, like numbers: one ``.item()``
costs less than the copy, concatenation and later read it replaces.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from trainvitals.trainer_plugin.values.devices import local, reads_now

__all__ = ["PendingValues", "StepStaging"]


@dataclass
class _DeviceGroup:
    parts: list[torch.Tensor] = field(default_factory=list)
    width: int = 0


@dataclass
class PendingValues:
    """Host copies in flight; ``wait()`` blocks the calling (sender) thread only."""

    slots: dict[str, tuple[int, int, int]]  # key -> (group index, offset, width)
    host: list[torch.Tensor]
    events: list[Any]  # torch.cuda.Event | None per group
    constants: dict[str, list[float]]

    def wait(self) -> dict[str, list[float]]:
        """Every staged value as Python floats, keyed as staged."""
        for event in self.events:
            if event is not None:
                event.synchronize()
        groups = [h.tolist() for h in self.host]
        out = dict(self.constants)
        for key, (group, offset, width) in self.slots.items():
            out[key] = groups[group][offset:offset + width]
        return out


class StepStaging:
    """Collects one step's values by key; ``seal()`` starts their one transfer to the host."""

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self._groups: dict[torch.device, _DeviceGroup] = {}
        self._slots: dict[str, tuple[torch.device, int, int]] = {}
        self._constants: dict[str, list[float]] = {}

    def __len__(self) -> int:
        return len(self._slots) + len(self._constants)

    def add(self, key: str, value: torch.Tensor | float | int | Sequence[float]) -> None:
        """Stage a number, numbers, or a 1-D/0-d tensor under ``key`` (a later add replaces
        it). A tensor's values are taken now, whatever happens to it before ``seal()``."""
        self._slots.pop(key, None)
        self._constants.pop(key, None)
        if not isinstance(value, torch.Tensor):
            self._constants[key] = ([float(value)] if isinstance(value, (int, float))
                                    else [float(v) for v in value])
            return
        value = local(value)  # a replicated DTensor (FSDP2's grad norm): its local copy
        if reads_now(value):
            # float(): a bool or an int becomes what the float64 copy would have made of it.
            self._constants[key] = ([float(value.item())] if value.numel() == 1
                                    else [float(v) for v in value.detach().reshape(-1).tolist()])
            return
        flat = value.detach().reshape(-1)
        group = self._groups.setdefault(flat.device, _DeviceGroup())
        self._slots[key] = (flat.device, group.width, flat.numel())
        # copy=True: a float64 value must be taken now, like any other (to() of another
        # dtype copies anyway); the caller may update its tensor in place before seal().
        group.parts.append(flat.to(torch.float64, copy=True))
        group.width += flat.numel()

    def seal(self) -> PendingValues:
        """Start the host copies and return a handle for the sender; the staging is emptied."""
        devices = list(self._groups)
        host: list[torch.Tensor] = []
        events: list[Any] = []
        for device in devices:
            joined = torch.cat(self._groups[device].parts)
            copy, event = _to_host(joined)
            host.append(copy)
            events.append(event)
        index = {device: i for i, device in enumerate(devices)}
        slots = {key: (index[dev], offset, width)
                 for key, (dev, offset, width) in self._slots.items()}
        pending = PendingValues(slots, host, events, dict(self._constants))
        self._reset()
        return pending


def _to_host(values: torch.Tensor) -> tuple[torch.Tensor, Any]:
    if values.device.type != "cuda":
        # CPU (and other synchronous backends): the values are already computed; a fresh
        # tensor (cat made one) is safe to read later from the sender thread.
        return values if values.device.type == "cpu" else values.cpu(), None
    host = torch.empty(values.shape, dtype=values.dtype, pin_memory=True)
    host.copy_(values, non_blocking=True)
    event = torch.cuda.Event()  # type: ignore[no-untyped-call]
    event.record()
    return host, event
