"""The JSON response of every REST answer: non-finite floats kept (``protocol.wire_json``)."""

from __future__ import annotations

from typing import Any

from starlette.responses import JSONResponse

from trainvitals.protocol.wire_json import wire_dumps

__all__ = ["WireJSONResponse"]


class WireJSONResponse(JSONResponse):
    """A JSON response that carries non-finite floats as strings instead of failing.

    A ``JSONResponse`` subclass so that FastAPI documents its routes as JSON in the OpenAPI
    schema (for any other class it claims the body is a string)."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return wire_dumps(content).encode("utf-8")
