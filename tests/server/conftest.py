"""Fixtures for the server tests: stores on temporary files and real servers on free ports.

``store`` is parametrized over the store implementations: SQLite in a temporary directory and
PostgreSQL in a fresh database of the session's throwaway cluster (tests/conftest.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from trainvitals.server import ServerThread, Settings, SQLiteStore, Store

INGEST_TOKEN = "ingest-token-for-tests"

StoreFactory = Callable[[], Store]


@pytest.fixture(params=["sqlite", "postgres"])
def store_factory(request: pytest.FixtureRequest, tmp_path: Path) -> StoreFactory:
    """Makes unopened stores that all use the same (fresh, empty) location."""
    if request.param == "sqlite":
        return lambda: SQLiteStore(tmp_path / "store" / "trainvitals.sqlite3")
    if request.param == "postgres":
        from trainvitals.server.store.postgres.store import PostgresStore

        url = request.getfixturevalue("postgres_url")
        return lambda: PostgresStore(url)
    raise AssertionError(f"unknown store kind {request.param}")


@pytest.fixture
def store(store_factory: StoreFactory) -> Iterator[Store]:
    """An opened, empty store; closed afterwards."""
    s = store_factory()
    s.open()
    yield s
    s.close()


@pytest.fixture
def ingest_token() -> str:
    return INGEST_TOKEN


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Callable[..., ServerThread]]:
    """Starts real servers (uvicorn in a thread, SQLite in ``tmp_path``); stops them after."""
    started: list[ServerThread] = []

    def start(**overrides: Any) -> ServerThread:
        options: dict[str, Any] = {"port": 0, "data_dir": tmp_path / "data",
                                   "ingest_token": INGEST_TOKEN, "log_alerts": False}
        options.update(overrides)
        srv = ServerThread(Settings(**options)).start()
        started.append(srv)
        return srv

    yield start
    for srv in reversed(started):
        srv.stop()


@pytest.fixture
def server(start_server: Callable[..., ServerThread]) -> ServerThread:
    """One running server with the default test settings."""
    return start_server()
