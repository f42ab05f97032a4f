"""Facts about the ingest transport that both sides must agree on (no I/O here).

The server states its frame size limit in a header of the websocket handshake response, so a
sender knows it before its first frame; a server that sends no such header is assumed to use
the default.
"""

from __future__ import annotations

__all__ = ["BATCH_OVERHEAD_BYTES", "DEFAULT_MAX_MESSAGE_BYTES", "MAX_MESSAGE_BYTES_HEADER"]

MAX_MESSAGE_BYTES_HEADER = "x-trainvitals-max-message-bytes"
DEFAULT_MAX_MESSAGE_BYTES = 1 << 20
# {"v":1,"type":"batch","dropped":<up to 19 digits>,"records":[]} is 65 bytes at most, and
# the optional "backlog" object (four counts of up to 19 digits and an age) at most 171 more;
# a record alone in a batch frame therefore fits when it is this much below the limit.
BATCH_OVERHEAD_BYTES = 256
