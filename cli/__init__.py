"""The ``trainvitals`` command (``python -m trainvitals.cli`` runs it too)."""

from trainvitals.cli.main import main

__all__ = ["main"]
