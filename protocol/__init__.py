"""The trainvitals wire format: pure, stdlib-only, shared by the trainer plugin and the server.

Bytes in, messages out; messages in, text out — no I/O here. See ``docs/protocol.md``.
"""

from trainvitals.protocol.codec import (
    MAX_ENTRIES,
    MAX_NAME_LENGTH,
    PROTOCOL_VERSION,
    check_name,
    decode,
    encode,
    encode_batch,
)
from trainvitals.protocol.errors import ProtocolError
from trainvitals.protocol.floats import float_from_wire, float_to_wire
from trainvitals.protocol.messages import (
    Ack,
    Batch,
    ClipEvent,
    Error,
    Message,
    NonFiniteOrigin,
    Record,
    RunEnd,
    RunStart,
    Step,
    TensorStats,
)

__all__ = [
    "MAX_ENTRIES",
    "MAX_NAME_LENGTH",
    "PROTOCOL_VERSION",
    "Ack",
    "Batch",
    "ClipEvent",
    "Error",
    "Message",
    "NonFiniteOrigin",
    "ProtocolError",
    "Record",
    "RunEnd",
    "RunStart",
    "Step",
    "TensorStats",
    "check_name",
    "decode",
    "encode",
    "encode_batch",
    "float_from_wire",
    "float_to_wire",
]
