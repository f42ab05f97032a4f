"""The messages of the wire format, as plain typed data.

Every record a trainer sends — ``RunStart``, ``Step``, ``RunEnd`` — belongs to one *stream*,
identified by ``(run, rank, session)``, and carries ``seq``: 0 for ``RunStart``, then 1, 2, …
with no gaps. ``session`` is a fresh id per process, so a run resumed under the same name is a
new stream of the same run. The server answers with ``Ack`` and ``Error``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "Ack",
    "Backlog",
    "Batch",
    "ClipEvent",
    "Error",
    "Message",
    "NonFiniteOrigin",
    "Record",
    "RunEnd",
    "RunStart",
    "Step",
    "TensorStats",
]

ClipAction = Literal["zeroed", "passed", "raised"]
ClipReason = Literal["above_threshold", "nan", "posinf", "neginf"]
NonFiniteKind = Literal["nan", "inf"]
NonFiniteStage = Literal["forward", "backward", "input"]
RunStatus = Literal["finished", "crashed"]


@dataclass(frozen=True, slots=True)
class TensorStats:
    """Statistics of one named tensor at one step; min/max/mean/absmax are over finite elements.

    ``headroom`` is set for tensors that feed ``exp``: how far ``max`` is below the log of the
    dtype's largest value (≈88.72 for float32, ≈11.09 for float16). NaN when there was no finite
    element.
    """

    count: int
    nan: int
    posinf: int
    neginf: int
    min: float
    max: float
    mean: float
    absmax: float
    dtype: str = ""
    headroom: float | None = None

    @property
    def nonfinite(self) -> int:
        """How many elements were NaN or infinite."""
        return self.nan + self.posinf + self.neginf


@dataclass(frozen=True, slots=True)
class ClipEvent:
    """A trainer-side loss guard fired: what it saw, against what, and what it did."""

    raw: float
    threshold: float
    action: ClipAction
    reason: ClipReason
    components: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class NonFiniteOrigin:
    """Where a run's non-finite values started, as ``Monitor.watch`` located them.

    ``step`` is the training step whose forward or backward first produced the value (a later
    record may carry it: the op-level trace arrives some steps after the step it explains).
    ``stage`` says where: ``forward`` — ``module`` is the first module, in execution order,
    whose output was non-finite while its inputs were finite; ``input`` — the watched model
    (``module``) was already given non-finite inputs; ``backward`` — only gradients went
    non-finite (``module`` is None). ``param`` is the first parameter, in backward order, whose
    gradient was non-finite. ``op`` and ``source`` come from the optional op-level re-run: the torch
    function that first turned finite inputs into a non-finite output, and the user's source
    line that called it (``path/model.py:41 in forward``). ``None`` means "not found".
    """

    step: int
    kind: NonFiniteKind = "nan"
    stage: NonFiniteStage = "forward"
    module: str | None = None
    module_type: str | None = None
    param: str | None = None
    op: str | None = None
    source: str | None = None


@dataclass(frozen=True, slots=True)
class RunStart:
    """A process begins reporting a run (``seq`` 0 of its stream)."""

    run: str
    session: str
    rank: int = 0
    world_size: int = 1
    seq: int = 0
    time: float = 0.0
    host: str = ""
    pid: int = 0
    config: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Step:
    """Everything measured at one training step of one rank.

    ``loss`` is the raw loss before any trainer-side guard; ``loss_used`` is what was
    backpropagated. ``grad_norm`` is the total norm before gradient clipping, ``grad_norm_post``
    after. ``None`` means "not reported", never "zero". ``origin`` says where non-finite
    values started, when ``Monitor.watch`` found out.
    """

    run: str
    session: str
    seq: int
    step: int
    rank: int = 0
    time: float = 0.0
    loss: float | None = None
    loss_used: float | None = None
    grad_norm: float | None = None
    grad_norm_post: float | None = None
    lr: float | None = None
    components: dict[str, float] = field(default_factory=dict)
    scalars: dict[str, float] = field(default_factory=dict)
    tensors: dict[str, TensorStats] = field(default_factory=dict)
    clip: ClipEvent | None = None
    origin: NonFiniteOrigin | None = None


@dataclass(frozen=True, slots=True)
class RunEnd:
    """A process stops reporting a run; ``dropped`` counts records it could not deliver."""

    run: str
    session: str
    seq: int
    rank: int = 0
    time: float = 0.0
    status: RunStatus = "finished"
    reason: str = ""
    dropped: int = 0


Record = RunStart | Step | RunEnd


@dataclass(frozen=True, slots=True)
class Backlog:
    """What the sender still holds when it sends a frame, so the server can say when a trainer
    falls behind: ``records`` spooled and not yet acknowledged (this frame's included), the
    spool's ``bytes`` and its limit ``max_bytes`` (records beyond it are dropped; 0: no limit,
    as for a spool that ``trainvitals sync`` uploads), the
    ``oldest_age`` in seconds of the oldest unacknowledged record (by the sender's clock; 0
    when unknown), and ``last_seq``, the highest seq the spool holds."""

    records: int
    bytes: int
    max_bytes: int
    oldest_age: float
    last_seq: int


@dataclass(frozen=True, slots=True)
class Batch:
    """Several records in one frame; ``dropped`` is the sender's running count of lost records,
    ``backlog`` what it still holds (``None``: not reported, as by older senders)."""

    records: tuple[Record, ...]
    dropped: int = 0
    backlog: Backlog | None = None


@dataclass(frozen=True, slots=True)
class Ack:
    """The server has committed every record of the stream up to and including ``seq``."""

    run: str
    session: str
    seq: int
    rank: int = 0


@dataclass(frozen=True, slots=True)
class Error:
    """The server refused a frame; ``code`` matches ``ProtocolError.code`` or ``"unauthorized"``."""

    code: str
    message: str
    fatal: bool = False


Message = RunStart | Step | RunEnd | Batch | Ack | Error
