"""The one error type of the wire format."""

from __future__ import annotations

__all__ = ["ProtocolError"]

# Codes are stable strings: peers and tests match on them, people read the message.
MALFORMED = "malformed"  # not JSON, or not an object
INVALID = "invalid"  # JSON, but a field is missing, mistyped or out of range
UNSUPPORTED_VERSION = "unsupported_version"
TOO_LARGE = "too_large"
# Codes only the server sends in error frames (decode never raises them):
UNAVAILABLE = "unavailable"  # a commit failed; nothing of the frame was stored; send it again
LIMIT_EXCEEDED = "limit_exceeded"  # a server limit refuses the records; resending cannot help


class ProtocolError(ValueError):
    """A frame that does not follow the trainvitals wire format.

    ``code`` is one of ``"malformed"``, ``"invalid"``, ``"unsupported_version"`` or
    ``"too_large"``; ``str(error)`` says what was wrong and where, for a person.
    """

    def __init__(self, message: str, *, code: str = INVALID) -> None:
        super().__init__(message)
        self.code = code
