"""Thin adapters from training frameworks to ``Monitor``: no edits to the training loop.

* ``attach(model, optimizer, ...)`` — plain PyTorch loops, and HF Accelerate with
  ``accelerator=`` (``TrainvitalsTracker`` for ``Accelerator(log_with=[...])``);
* ``LightningCallback`` — PyTorch Lightning;
* ``TransformersCallback`` and ``attach_trainer(trainer)`` — the HF ``Trainer``.

Each framework is imported only when its adapter is first used.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__all__ = ["Attachment", "LightningCallback", "TrainvitalsTracker", "TransformersCallback",
           "attach", "attach_trainer"]

if TYPE_CHECKING:
    from trainvitals.trainer_plugin.adapters.for_accelerate import TrainvitalsTracker
    from trainvitals.trainer_plugin.adapters.for_lightning import LightningCallback
    from trainvitals.trainer_plugin.adapters.for_transformers import (
        TransformersCallback,
        attach_trainer,
    )
    from trainvitals.trainer_plugin.adapters.plain import Attachment, attach

_HOMES = {"Attachment": "plain", "attach": "plain", "TrainvitalsTracker": "for_accelerate",
          "LightningCallback": "for_lightning", "TransformersCallback": "for_transformers",
          "attach_trainer": "for_transformers"}


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        module = import_module(f"trainvitals.trainer_plugin.adapters.{_HOMES[name]}")
        return getattr(module, name)
    raise AttributeError(f"module 'trainvitals.trainer_plugin.adapters' has no attribute {name!r}")
