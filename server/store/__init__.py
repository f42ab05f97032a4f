"""Storage: the seam every store implements (``base``), the embedded SQLite store and the
PostgreSQL store for replicas (``sqlite/``, ``postgres/``), and what both share — block
summaries, M4 downsampling, limits, JSON columns — plus ``trainvitals export``/``import``.

Never imports the HTTP, ingest, live or notification layers.
"""

from trainvitals.server.store.base import (
    ClipRow,
    OriginRow,
    RunRow,
    SeriesData,
    SeriesInfo,
    Store,
    WriteResult,
)

__all__ = ["ClipRow", "OriginRow", "RunRow", "SeriesData", "SeriesInfo", "Store", "WriteResult"]
