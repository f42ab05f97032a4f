"""REST parameter types bounded as SQLite stores them (signed 64-bit integers).

Declared in the OpenAPI schema, so clients (and schemathesis) know the range, and a number
out of it is answered with 422 before it reaches the store — never a 500.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Path, Query

__all__ = ["INT64_MAX", "INT64_MIN", "Rank", "RunId", "StepBound"]

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

RunId = Annotated[int, Path(ge=1, le=INT64_MAX, description="a run's id, from /api/runs")]
Rank = Annotated[int | None, Query(ge=0, le=INT64_MAX, description="only this rank")]
StepBound = Annotated[int | None, Query(ge=INT64_MIN, le=INT64_MAX,
                                        description="a step number (inclusive bound)")]
