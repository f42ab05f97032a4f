"""Facts about the ingest transport that both sides must agree on (no I/O here).

The server states its frame size limit in a header of the websocket handshake response, so a
sender knows it before its first frame; a server that sends no such header is assumed to use
the default. It also states the protocol versions it reads; a sender sends version 2 (binary)
frames only to a server that says it reads them, version 1 (JSON) to any other.
"""

from __future__ import annotations

__all__ = ["BATCH_OVERHEAD_BYTES", "DEFAULT_MAX_MESSAGE_BYTES", "MAX_MESSAGE_BYTES_HEADER",
           "VERSIONS_HEADER", "reads_versions"]

MAX_MESSAGE_BYTES_HEADER = "x-trainvitals-max-message-bytes"
VERSIONS_HEADER = "x-trainvitals-versions"  # e.g. "1,2": the frame versions the server reads
DEFAULT_MAX_MESSAGE_BYTES = 1 << 20
# {"v":1,"type":"batch","dropped":<up to 19 digits>,"records":[]} is 65 bytes at most, and
# the optional "backlog" object (four counts of up to 19 digits and an age) at most 171 more;
# a record alone in a batch frame therefore fits when it is this much below the limit.
BATCH_OVERHEAD_BYTES = 256


def reads_versions(header: str) -> set[int]:
    """The versions a ``VERSIONS_HEADER`` value names (none for a missing or odd one: a
    server from before version 2, which reads version 1 only)."""
    return {int(part) for part in header.split(",") if part.strip().isdigit()}
