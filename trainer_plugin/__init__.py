"""The trainvitals trainer plugin: runs inside the training job, never slows its step.

Statistics stay on the device until one transfer per step; calls only stage and enqueue; one
daemon thread sends. Never imports ``trainvitals.server``.

The names below load on first use, so that torch-free parts (the spool and ``trainvitals
sync``) can be imported without importing torch.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__all__ = ["CallTimes", "DeliveryStats", "Monitor", "NonFiniteLossError", "attach",
           "exp_overflow_log", "time_watch"]

if TYPE_CHECKING:
    from trainvitals.trainer_plugin.adapters.plain import attach
    from trainvitals.trainer_plugin.delivery.sender import DeliveryStats
    from trainvitals.trainer_plugin.monitor import CallTimes, Monitor
    from trainvitals.trainer_plugin.values.clip import NonFiniteLossError
    from trainvitals.trainer_plugin.values.stats import exp_overflow_log
    from trainvitals.trainer_plugin.watch.cost import time_watch

_HOMES = {"NonFiniteLossError": "values.clip", "CallTimes": "monitor", "Monitor": "monitor",
          "DeliveryStats": "delivery.sender", "exp_overflow_log": "values.stats",
          "attach": "adapters.plain", "time_watch": "watch.cost"}


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(import_module(f"trainvitals.trainer_plugin.{_HOMES[name]}"), name)
    raise AttributeError(f"module 'trainvitals.trainer_plugin' has no attribute {name!r}")
