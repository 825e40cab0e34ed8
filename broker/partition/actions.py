"""What the state machine asks the outside world to do, after the batch is committed."""

from __future__ import annotations

from dataclasses import dataclass

from ._outbox import OutboxReady


@dataclass(slots=True)
class StartAttempt:
    """Open a stream to the handler: ``frames`` is the StartMessage plus the journal."""

    id: bytes
    epoch: int
    service: str
    handler: str
    deployment_id: str
    frames: bytes


@dataclass(slots=True)
class SendToAttempt:
    """Deliver a notification to a running attempt (dropped if the epoch moved on)."""

    id: bytes
    epoch: int
    frame: bytes


@dataclass(slots=True)
class AbortAttempt:
    """Close the stream of this attempt (later attempts are not touched)."""

    id: bytes
    epoch: int


@dataclass(slots=True)
class RegisterTimer:
    fire_at: int
    key: bytes


@dataclass(slots=True)
class Reply:
    """Answer an ingress (or admin) request waiting on this node.

    ``kind``: "result" (value or failure), "accepted" / "previously" (a send), "ok", "error".
    """

    waiter: int
    kind: str
    id: bytes = b""
    value: bytes | None = None
    code: int = 0
    message: str = ""
    service: str = ""
    handler: str = ""


@dataclass(slots=True)
class SchemaChanged:
    pass


@dataclass(slots=True)
class KafkaDone:
    """An invocation created from a Kafka record finished (frees a backpressure slot)."""

    subscription: str


@dataclass(slots=True)
class DeadLetterPending:
    """A row of the ``kafka_dlq`` table waits to be produced to its dead-letter topic."""

    key: bytes


@dataclass(slots=True)
class SubscriptionsChanged:
    pass


@dataclass(slots=True)
class ShuffleReady:
    """Rows of the ``shuffle`` table wait to be appended to ``target``'s log."""

    target: int


KafkaAction = KafkaDone | DeadLetterPending | SubscriptionsChanged
# Everything the state machine may ask for (OutboxReady: egress rows became sendable).
Action = (
    StartAttempt | SendToAttempt | AbortAttempt | RegisterTimer | Reply | SchemaChanged
    | KafkaAction | OutboxReady | ShuffleReady
)  # fmt: skip
