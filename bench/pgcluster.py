"""A throwaway PostgreSQL cluster for the benchmarks (``--store postgres``): the tests' own
(``tests.support.postgres``), durable — fsync and synchronous commit on — so the figures are
those of a durable database."""

from __future__ import annotations

import common  # noqa: F401  (puts tests.support on the path)

from tests.support.postgres import PostgresCluster as _Cluster

__all__ = ["PostgresCluster"]


class PostgresCluster(_Cluster):
    """``with PostgresCluster() as pg: pg.create_database()`` → a URL of a fresh database."""

    def __init__(self) -> None:
        super().__init__(durable=True)
