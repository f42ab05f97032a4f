"""A throwaway PostgreSQL cluster on 127.0.0.1 for the benchmarks (``--store postgres``).

A small copy of ``PostgresCluster`` in tests/conftest.py (a conftest is not importable from a
script): ``initdb`` into a temporary directory, ``pg_ctl start`` on a free port, trust auth on
127.0.0.1 only, removed on exit. Unlike the tests' cluster it keeps fsync on, so the figures are
those of a durable database (``synchronous_commit`` stays on too).
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from common import free_port

__all__ = ["PostgresCluster"]


class PostgresCluster:
    """``with PostgresCluster() as pg: pg.create_database()`` → a URL of a fresh database."""

    def __init__(self) -> None:
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
        if not found:
            raise SystemExit("PostgreSQL is not installed (scripts/install --postgres)")
        self.bin_dir = Path(found[-1]).parent
        self.root = Path(tempfile.mkdtemp(prefix="trainvitals-bench-pg-"))
        self.data, self.sockets = self.root / "data", self.root / "sockets"
        self.port = free_port()
        self._count = 0

    def url(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def start(self) -> PostgresCluster:
        self.sockets.mkdir(parents=True)
        if os.geteuid() == 0:  # initdb refuses root: run the cluster as the postgres user
            shutil.chown(self.root, "postgres")
            shutil.chown(self.sockets, "postgres")
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8")
        options = (f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.sockets} "
                   "-c max_connections=200 -c shared_buffers=256MB")
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-w", "-l",
                  str(self.root / "log"), "start")
        return self

    def create_database(self) -> str:
        """A new empty database; returns its URL."""
        import psycopg

        self._count += 1
        name = f"bench{self._count}"
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PostgresCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self, tool: str, *args: str) -> None:
        command = [str(self.bin_dir / tool), *args]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            log = self.root / "log"
            raise RuntimeError(f"{tool} failed: {done.stderr or done.stdout}"
                               + (log.read_text() if log.exists() else ""))
