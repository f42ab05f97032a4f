"""Fixtures shared by every test folder: a throwaway PostgreSQL cluster, and headless Chromium.

The cluster (``tests.support.postgres``) is started by hand on 127.0.0.1, once per test
session, in a temporary directory, and stopped at the end. Each test that asks for
``postgres_url`` gets a fresh, empty database of its own.

Without PostgreSQL binaries the PostgreSQL tests are skipped — unless
``TRAINVITALS_REQUIRE_POSTGRES=1`` (``scripts/test`` sets it), where they fail instead, so CI
cannot pass without running them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.browser import launch, require_chromium
from tests.support.postgres import PostgresCluster, postgres_bin


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Chromium (``tests.support.browser``), one per test module; a module that
    needs other launch options defines its own."""
    sync_api = pytest.importorskip("playwright.sync_api")
    require_chromium()
    with sync_api.sync_playwright() as pw:
        chromium = launch(pw)
        yield chromium
        chromium.close()


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    """The session's PostgreSQL cluster (started on first use)."""
    bin_dir = postgres_bin()
    missing = "PostgreSQL is not installed (scripts/install --postgres installs it)"
    if bin_dir is None:
        if os.environ.get("TRAINVITALS_REQUIRE_POSTGRES") == "1":
            pytest.fail(missing)
        pytest.skip(missing)
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.fail("psycopg is not installed: pip install 'trainvitals[postgres]'")
    with PostgresCluster(bin_dir) as cluster:
        yield cluster


@pytest.fixture
def postgres_url(postgres_cluster: PostgresCluster) -> str:
    """The URL of a fresh, empty database on the session's cluster."""
    return postgres_cluster.create_database()
