"""trainvitals: live vital signs and alarms for PyTorch training runs.

``import trainvitals`` is cheap and torch-free; the trainer-side names below load the plugin
(and torch) on first use, so a server-only install can import this package too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["Monitor", "NonFiniteLossError", "__version__", "attach"]

if TYPE_CHECKING:
    from trainvitals.trainer_plugin import Monitor, NonFiniteLossError, attach


def __getattr__(name: str) -> Any:
    if name in ("Monitor", "NonFiniteLossError", "attach"):
        import trainvitals.trainer_plugin as plugin

        return getattr(plugin, name)
    raise AttributeError(f"module 'trainvitals' has no attribute {name!r}")
