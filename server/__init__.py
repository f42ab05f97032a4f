"""The trainvitals server: ingest over websockets, SQLite storage, alerts, live dashboard."""

from trainvitals.server.app import create_app
from trainvitals.server.runner import ServerThread, serve_forever
from trainvitals.server.settings import Settings
from trainvitals.server.store import Store
from trainvitals.server.store.sqlite.store import SQLiteStore

__all__ = ["SQLiteStore", "ServerThread", "Settings", "Store", "create_app", "serve_forever"]
