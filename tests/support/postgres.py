"""A throwaway PostgreSQL cluster on 127.0.0.1, for the tests and the benchmarks.

``initdb`` into a temporary directory (as the ``postgres`` user when we are root: initdb
refuses root), ``pg_ctl start`` on a free port with trust authentication on 127.0.0.1 only,
removed by ``stop()``. The tests run it without fsync (speed); the benchmarks with
``durable=True`` (fsync and synchronous commit on), so their figures are a durable database's.
"""

from __future__ import annotations

import glob
import itertools
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.support.ports import free_port

__all__ = ["PostgresCluster", "postgres_bin"]


def postgres_bin() -> Path | None:
    """The newest installed PostgreSQL's bin directory, or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    return Path(found[-1]).parent if found else None


class PostgresCluster:
    """``with PostgresCluster() as pg: pg.create_database()`` → the URL of a fresh database."""

    def __init__(self, bin_dir: Path | None = None, root: Path | None = None, *,
                 durable: bool = False) -> None:
        found = bin_dir or postgres_bin()
        if found is None:
            raise RuntimeError("PostgreSQL is not installed (scripts/install --postgres)")
        self.bin_dir = found
        self.root = root or Path(tempfile.mkdtemp(prefix="trainvitals-pg-"))
        self.data, self.sockets = self.root / "data", self.root / "sockets"
        self.port, self.durable = free_port(), durable
        self._databases = itertools.count()

    @property
    def admin_url(self) -> str:
        return self.url("postgres")

    def url(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def start(self) -> PostgresCluster:
        self.sockets.mkdir(parents=True)
        if os.geteuid() == 0:  # initdb refuses root: run the cluster as the postgres user
            shutil.chown(self.root, "postgres")
            shutil.chown(self.sockets, "postgres")
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
                  *(() if self.durable else ("--no-sync",)))
        options = (f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.sockets} "
                   "-c max_connections=200")
        options += (" -c shared_buffers=256MB" if self.durable else
                    " -c fsync=off -c synchronous_commit=off -c full_page_writes=off")
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-w", "-l",
                  str(self.root / "log"), "start")
        return self

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast" if self.durable else "immediate",
                  "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)

    def create_database(self) -> str:
        """A new empty database; returns its URL."""
        import psycopg

        name = f"t{next(self._databases)}"
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

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
