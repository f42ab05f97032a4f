"""The trainvitals trainer plugin: runs inside the training job, never slows its step.

Statistics stay on the device until one transfer per step; calls only stage and enqueue; one
daemon thread sends. Never imports ``trainvitals.server``.
"""

from trainvitals.trainer_plugin.clip import NonFiniteLossError
from trainvitals.trainer_plugin.monitor import CallTimes, Monitor
from trainvitals.trainer_plugin.sender import DeliveryStats
from trainvitals.trainer_plugin.stats import exp_overflow_log

__all__ = ["CallTimes", "DeliveryStats", "Monitor", "NonFiniteLossError", "exp_overflow_log"]
