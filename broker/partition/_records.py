"""Binary records: the log commands and the table rows, in the same small proto3 codec as the
service protocol (so the log and the tables stay compact and schema-evolvable)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from sluice.protocol import Failure, Header, Message
from sluice.protocol._proto import (
    BOOL,
    BYTES,
    MSG,
    OPT_BYTES,
    OPT_STRING,
    OPT_UINT,
    REP_BYTES,
    REP_MSG,
    REP_STRING,
    REP_UINT,
    STRING,
    UINT,
)

from ._outbox import EgressCommitted, EgressIdentity, EgressTarget, KafkaBatch

# --- shared pieces ---------------------------------------------------------------------------


class SinkKind:
    INGRESS = 1  # an HTTP request waiting on this node (waiter id; lost on restart, by design)
    CALLER = 2  # another invocation's journal (invocation id, completion id, notification type)
    KAFKA = 3  # a Kafka subscription (subscription name, dead-letter topic): see lifecycle/kafka.py


@dataclass(slots=True)
class Sink(Message):
    kind: int = 0
    waiter: int = 0
    invocation: bytes = b""
    completion_id: int = 0
    notification_type: int = 0
    subscription: str = ""
    dead_letter_topic: str = ""
    outbox: bytes = b""  # the outbox row reserved for the result (lifecycle/egress.py)
    outbox_partition: int = 0  # the partition whose outbox holds that row
    _schema: ClassVar = (
        (1, "kind", UINT),
        (2, "waiter", UINT),
        (3, "invocation", BYTES),
        (4, "completion_id", UINT),
        (5, "notification_type", UINT),
        (6, "subscription", STRING),
        (7, "dead_letter_topic", STRING),
        (8, "outbox", BYTES),
        (9, "outbox_partition", UINT),
    )


class Kind:
    """How an invocation holds its key."""

    SERVICE = 0
    EXCLUSIVE = 1  # virtual object exclusive handler: one at a time per key, FIFO
    SHARED = 2  # object or workflow shared handler: concurrent, read-only state
    WORKFLOW = 3  # the workflow's run handler: once per workflow id, exclusive


# --- log commands ---------------------------------------------------------------------------


@dataclass(slots=True)
class Invoke(Message):
    id: bytes = b""
    service: str = ""
    handler: str = ""
    key: str = ""
    kind: int = 0
    input: bytes = b""
    headers: list[Header] = field(default_factory=list)
    idempotency_key: str | None = None
    sink: Sink | None = None
    send: bool = False  # the sink wants an acceptance, not the result
    execute_at: int = 0  # ms since the epoch; 0 = now
    retention_ms: int = 0  # how long the completed result stays attachable
    caller: bytes = b""  # the calling invocation, for cancellation propagation
    _schema: ClassVar = (
        (1, "id", BYTES),
        (2, "service", STRING),
        (3, "handler", STRING),
        (4, "key", STRING),
        (5, "kind", UINT),
        (6, "input", BYTES),
        (7, "headers", REP_MSG, Header),
        (8, "idempotency_key", OPT_STRING),
        (9, "sink", MSG, Sink),
        (10, "send", BOOL),
        (11, "execute_at", UINT),
        (12, "retention_ms", UINT),
        (13, "caller", BYTES),
    )


@dataclass(slots=True)
class Effects(Message):
    """Messages an attempt's stream produced (raw frames), tagged with the attempt's epoch."""

    id: bytes = b""
    epoch: int = 0
    frames: bytes = b""
    transport_failure: Failure | None = None
    _schema: ClassVar = (
        (1, "id", BYTES),
        (2, "epoch", UINT),
        (3, "frames", BYTES),
        (4, "transport_failure", MSG, Failure),
    )


@dataclass(slots=True)
class Signal(Message):
    """A signal from outside (awakeable resolve/reject from the ingress)."""

    target: bytes = b""
    idx: int | None = None
    name: str | None = None
    value: bytes | None = None
    failure: Failure | None = None
    waiter: int = 0
    _schema: ClassVar = (
        (1, "target", BYTES),
        (2, "idx", OPT_UINT),
        (3, "name", OPT_STRING),
        (4, "value", OPT_BYTES),
        (5, "failure", MSG, Failure),
        (6, "waiter", UINT),
    )


@dataclass(slots=True)
class TimerFired(Message):
    key: bytes = b""
    _schema: ClassVar = ((1, "key", BYTES),)


class Terminate:
    CANCEL = 1
    KILL = 2
    PURGE = 3
    RESUME = 4
    RESTART = 5  # after a broker restart: the running attempt died with the old process


@dataclass(slots=True)
class Manage(Message):
    """An operator's action on one invocation (admin API)."""

    id: bytes = b""
    action: int = 0
    waiter: int = 0
    _schema: ClassVar = ((1, "id", BYTES), (2, "action", UINT), (3, "waiter", UINT))


class AttachMode:
    ATTACH = 1
    OUTPUT = 2


@dataclass(slots=True)
class Attach(Message):
    id: bytes = b""
    mode: int = 0
    waiter: int = 0
    _schema: ClassVar = ((1, "id", BYTES), (2, "mode", UINT), (3, "waiter", UINT))


@dataclass(slots=True)
class SchemaUpdate(Message):
    """Register (json) or remove (remove_id) a deployment."""

    deployment_json: bytes = b""
    remove_id: str = ""
    waiter: int = 0
    _schema: ClassVar = (
        (1, "deployment_json", BYTES),
        (2, "remove_id", STRING),
        (3, "waiter", UINT),
    )


@dataclass(slots=True)
class KafkaRecord(Message):
    """One Kafka record of a KafkaIngest batch. ``reason`` set: the consumer could not turn it
    into an invocation (the raw key and value are kept for the dead-letter topic)."""

    offset: int = 0
    key: str = ""  # the object key (UTF-8, or the documented encoding of other bytes)
    input: bytes = b""
    headers: list[Header] = field(default_factory=list)
    reason: str = ""
    raw_key: bytes | None = None
    raw_value: bytes | None = None
    _schema: ClassVar = (
        (1, "offset", UINT),
        (2, "key", STRING),
        (3, "input", BYTES),
        (4, "headers", REP_MSG, Header),
        (5, "reason", STRING),
        (6, "raw_key", OPT_BYTES),
        (7, "raw_value", OPT_BYTES),
    )


@dataclass(slots=True)
class KafkaIngest(Message):
    """Records of one Kafka partition, in offset order. ``producer`` is the dedup id (a hash of
    subscription, topic and partition); a record whose offset is not above the last applied
    one for that producer is skipped, in the same write as the invocations it creates."""

    subscription: str = ""
    producer: bytes = b""
    topic: str = ""
    partition: int = 0
    service: str = ""
    handler: str = ""
    kind: int = 0
    dead_letter_topic: str = ""
    records: list[KafkaRecord] = field(default_factory=list)
    waiter: int = 0
    generation: int = 0  # the subscription's creation time: part of the invocation ids
    output: EgressTarget | None = None  # results go to this topic (lifecycle/egress.py)
    batch_max: int = 0  # > 0: a stream handler, one invocation per up to this many records
    batches: list[KafkaBatch] = field(default_factory=list)  # a stream handler's records
    # The partition's epoch (_positions.py): the consumer raises it, in a command with no
    # records, when it found the topic recreated and starts over; ``topic_id``: the topic's
    # id as the consumer found it (empty: the broker reports none).
    epoch: int = 0
    topic_id: str = ""
    _schema: ClassVar = (
        (1, "subscription", STRING),
        (2, "producer", BYTES),
        (3, "topic", STRING),
        (4, "partition", UINT),
        (5, "service", STRING),
        (6, "handler", STRING),
        (7, "kind", UINT),
        (8, "dead_letter_topic", STRING),
        (9, "records", REP_MSG, KafkaRecord),
        (10, "waiter", UINT),
        (11, "generation", UINT),
        (20, "output", MSG, EgressTarget),
        (21, "batch_max", UINT),
        (22, "batches", REP_MSG, KafkaBatch),
        (23, "epoch", UINT),
        (24, "topic_id", STRING),
    )


@dataclass(slots=True)
class SubscriptionUpdate(Message):
    """Put (``row``, JSON) or delete (empty ``row``) a Kafka cluster or a subscription.
    ``reset`` forgets the subscription's dedup positions (re-create with from=earliest)."""

    table: str = ""  # "kafka_clusters" or "subscriptions"
    name: str = ""
    row: bytes = b""
    reset: bytes = b""  # dedup prefix to forget
    waiter: int = 0
    _schema: ClassVar = (
        (1, "table", STRING),
        (2, "name", STRING),
        (3, "row", BYTES),
        (4, "reset", BYTES),
        (5, "waiter", UINT),
    )


@dataclass(slots=True)
class DeadLettered(Message):
    """The dead-letter sender delivered these pending rows: delete them."""

    keys: list[bytes] = field(default_factory=list)
    _schema: ClassVar = ((1, "keys", REP_BYTES),)


@dataclass(slots=True)
class Expire(Message):
    """Forget completed invocations whose retention ended at or before ``upto`` (ms)."""

    upto: int = 0
    _schema: ClassVar = ((1, "upto", UINT),)


@dataclass(slots=True)
class AnnounceLeader(Message):
    """A node leads the partition from ``epoch`` on (DESIGN.md, "Leadership"): applied only
    if ``epoch`` is above the current one; then proposals of older epochs are dropped."""

    epoch: int = 0
    node: str = ""
    address: str = ""
    _schema: ClassVar = ((1, "epoch", UINT), (2, "node", STRING), (3, "address", STRING))


@dataclass(slots=True)
class Proposal(Message):
    """A leader's own command (an attempt's effects, a timer firing, a restart), stamped with
    its epoch and a sequence number within it: applied under that epoch only, and once."""

    epoch: int = 0
    seq: int = 0
    command: bytes = b""  # encode_command(the command)
    _schema: ClassVar = ((1, "epoch", UINT), (2, "seq", UINT), (3, "command", BYTES))


@dataclass(slots=True)
class Routed(Message):
    """A command from another partition's outbox (lifecycle/shuffle.py): applied once, in the
    order the source wrote it; ``seq`` rises per source, so a resent one is dropped."""

    source: int = 0
    seq: int = 0
    command: bytes = b""  # encode_command(the command)
    _schema: ClassVar = ((1, "source", UINT), (2, "seq", UINT), (3, "command", BYTES))


@dataclass(slots=True)
class Notify(Message):
    """A notification for an invocation of this partition from one of another (a callee's
    result, a signal, an awakeable's completion)."""

    id: bytes = b""
    notification: bytes = b""  # the encoded notification frame
    _schema: ClassVar = ((1, "id", BYTES), (2, "notification", BYTES))


@dataclass(slots=True)
class AttachCaller(Message):
    """An invocation of another partition waits for this one's result (AttachInvocation) or
    asks for it if there is one (GetInvocationOutput, ``output_only``)."""

    id: bytes = b""
    sink: Sink | None = None
    output_only: bool = False
    _schema: ClassVar = ((1, "id", BYTES), (2, "sink", MSG, Sink), (3, "output_only", BOOL))


@dataclass(slots=True)
class FillOutbox(Message):
    """The invocation that reserved an outbox row of this partition (a Kafka record ingested
    here, invoked in another partition) ended: its result fills the row; or (``release``) it
    was paused: the row lets the later rows of its lane go (lifecycle/egress.py)."""

    key: bytes = b""
    value: bytes | None = None
    failure: Failure | None = None
    release: bool = False
    _schema: ClassVar = (
        (1, "key", BYTES),
        (2, "value", OPT_BYTES),
        (3, "failure", MSG, Failure),
        (4, "release", BOOL),
    )


@dataclass(slots=True)
class ShuffleDelivered(Message):
    """The leader appended this partition's outbox rows for ``target`` up to ``upto`` to the
    target's log: they can go."""

    target: int = 0
    upto: int = 0
    _schema: ClassVar = ((1, "target", UINT), (2, "upto", UINT))


@dataclass(slots=True)
class Leadership(Message):
    """The ``meta`` row of the current leader: its epoch, node and the last sequence applied."""

    epoch: int = 0
    seq: int = 0
    node: str = ""
    address: str = ""
    _schema: ClassVar = (
        (1, "epoch", UINT),
        (2, "seq", UINT),
        (3, "node", STRING),
        (4, "address", STRING),
    )


COMMANDS: dict[int, type[Message]] = {
    1: Invoke,
    2: Effects,
    3: Signal,
    4: TimerFired,
    5: Manage,
    6: Attach,
    7: SchemaUpdate,
    8: Expire,
    20: KafkaIngest,
    21: SubscriptionUpdate,
    22: DeadLettered,
    30: EgressCommitted,
    31: EgressIdentity,
    40: AnnounceLeader,
    41: Proposal,
    50: Routed,
    51: Notify,
    52: AttachCaller,
    53: ShuffleDelivered,
    54: FillOutbox,
}
COMMAND_CODES: dict[type[Message], int] = {cls: code for code, cls in COMMANDS.items()}
# The commands a request can wait on (``Broker.request``): each names it in ``waiter``.
RequestCommand = (
    Signal | Manage | Attach | SchemaUpdate | KafkaIngest | SubscriptionUpdate
    | EgressCommitted | EgressIdentity
)  # fmt: skip


def encode_command(cmd: Message) -> bytes:
    return bytes((COMMAND_CODES[type(cmd)],)) + cmd.encode()


def decode_command(payload: bytes) -> Message:
    return COMMANDS[payload[0]].decode(payload[1:])


# --- table rows -----------------------------------------------------------------------------


class Phase:
    SCHEDULED = 1  # delayed send, waiting for its timer
    INBOXED = 2  # waiting for its key
    INVOKED = 3  # an attempt is running
    SUSPENDED = 4
    BACKING_OFF = 5
    PAUSED = 6  # retries exhausted; an operator resumes or kills it
    COMPLETED = 7

    NAMES: ClassVar[dict[int, str]] = {
        1: "scheduled",
        2: "inboxed",
        3: "running",
        4: "suspended",
        5: "backing-off",
        6: "paused",
        7: "completed",
    }


@dataclass(slots=True)
class Status(Message):
    id: bytes = b""
    phase: int = 0
    service: str = ""
    handler: str = ""
    key: str = ""
    kind: int = 0
    epoch: int = 0
    journal_len: int = 0
    deployment_id: str = ""
    sinks: list[Sink] = field(default_factory=list)
    idempotency_key: str | None = None
    retention_ms: int = 0
    result: bytes | None = None
    failure: Failure | None = None
    has_output: bool = False
    created_at: int = 0
    modified_at: int = 0
    completed_at: int = 0
    retry_count: int = 0
    waiting_completions: list[int] = field(default_factory=list)
    waiting_signals: list[int] = field(default_factory=list)
    waiting_names: list[str] = field(default_factory=list)
    children: list[bytes] = field(default_factory=list)
    last_failure: str = ""
    inbox_seq: int = 0
    # Signal indexes already in the journal: the first resolve of an awakeable wins.
    signals: list[int] = field(default_factory=list)
    _schema: ClassVar = (
        (1, "id", BYTES),
        (2, "phase", UINT),
        (3, "service", STRING),
        (4, "handler", STRING),
        (5, "key", STRING),
        (6, "kind", UINT),
        (7, "epoch", UINT),
        (8, "journal_len", UINT),
        (9, "deployment_id", STRING),
        (10, "sinks", REP_MSG, Sink),
        (11, "idempotency_key", OPT_STRING),
        (12, "retention_ms", UINT),
        (13, "result", OPT_BYTES),
        (14, "failure", MSG, Failure),
        (15, "has_output", BOOL),
        (16, "created_at", UINT),
        (17, "modified_at", UINT),
        (18, "completed_at", UINT),
        (19, "retry_count", UINT),
        (20, "waiting_completions", REP_UINT),
        (21, "waiting_signals", REP_UINT),
        (22, "waiting_names", REP_STRING),
        (23, "children", REP_BYTES),
        (24, "last_failure", STRING),
        (25, "inbox_seq", UINT),
        (26, "signals", REP_UINT),
    )


class TimerKind:
    SLEEP = 1  # complete a SleepCommand
    RETRY = 2  # next attempt after a backoff
    START = 3  # a delayed send becomes due
    CLEANUP = 4  # a retained completed invocation expires


@dataclass(slots=True)
class Timer(Message):
    kind: int = 0
    id: bytes = b""
    completion_id: int = 0
    epoch: int = 0
    _schema: ClassVar = (
        (1, "kind", UINT),
        (2, "id", BYTES),
        (3, "completion_id", UINT),
        (4, "epoch", UINT),
    )


@dataclass(slots=True)
class Promise(Message):
    completed: bool = False
    value: bytes | None = None
    failure: Failure | None = None
    waiters: list[Sink] = field(default_factory=list)
    _schema: ClassVar = (
        (1, "completed", BOOL),
        (2, "value", OPT_BYTES),
        (3, "failure", MSG, Failure),
        (4, "waiters", REP_MSG, Sink),
    )
