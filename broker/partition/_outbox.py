"""Outbox rows and egress commands: records waiting to leave for Kafka.

outbox table, one sequence per (cluster, egress partition):

    cluster \\0 u32 sink | u64 seq ─► OutboxEntry
                          1 READY    records to send
                          2 READY
                          3 PENDING  reserved in input order, filled when its invocation ends
                          4 EMPTY    nothing to send (failed, or returned nothing)

Every row belongs to a lane: the input it answers (a subscription's partition), or lane 0
(``kafka_send``, READY at once). A PENDING row holds back the later rows of its own lane
only: the egress connector sends, in one Kafka transaction together with its progress
marker, the rows that are not PENDING and have no PENDING row before them in their lane,
then appends EgressCommitted, which deletes them (so trimming is a log command, replayed
alike on every node). Results leave in input order per lane; independent inputs do not wait
for each other.

A PENDING row whose invocation is paused (retries exhausted) is released: it leaves the
outbox for the ``meta`` table (``released_key``), so that its lane goes on; if an operator
resumes the invocation and it ends, its result joins the end of its lane as a new row.
"""

from __future__ import annotations

import struct
import sys
from array import array
from dataclasses import dataclass, field
from typing import ClassVar

from sluice.protocol import Header, Message
from sluice.protocol._proto import BOOL, BYTES, MSG, OPT_BYTES, REP_MSG, REP_UINT, STRING, UINT

_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")


class OutboxState:
    PENDING = 1
    READY = 2
    EMPTY = 3


@dataclass(slots=True)
class OutboxRecord(Message):
    topic: str = ""
    key: bytes | None = None
    value: bytes | None = None
    headers: list[Header] = field(default_factory=list)
    _schema: ClassVar = (
        (1, "topic", STRING),
        (2, "key", OPT_BYTES),
        (3, "value", OPT_BYTES),
        (4, "headers", REP_MSG, Header),
    )


@dataclass(slots=True)
class OutputFormat(Message):
    """How the egress connector encodes a row's values (no format: as the handler returned
    them). ``serde`` "avro": ``schema`` is inline JSON, a schema file, or a registry subject
    (resolved by ``connectors.serde.load_schema``), registered under ``subject``, in
    ``registry`` (empty: the output cluster's). A value that does not fit goes to
    ``dead_letter_topic`` of ``subscription``, or becomes a failed invocation."""

    serde: str = ""
    schema: str = ""
    subject: str = ""
    registry: str = ""
    subscription: str = ""
    dead_letter_topic: str = ""
    _schema: ClassVar = (
        (1, "serde", STRING),
        (2, "schema", STRING),
        (3, "subject", STRING),
        (4, "registry", STRING),
        (5, "subscription", STRING),
        (6, "dead_letter_topic", STRING),
    )


@dataclass(slots=True)
class OutboxEntry(Message):
    """One sequence number: zero or more records that leave in the same transaction.

    While PENDING, ``topic``, ``key`` and ``headers`` say where the invocation's result goes;
    ``batch``: the result is a JSON list of records (a stream handler), not one value;
    when READY it stays that JSON (``raw``), split into records only on its way out
    (``records_of``), so the state machine does not encode a message per record.
    """

    state: int = 0
    records: list[OutboxRecord] = field(default_factory=list)
    topic: str = ""
    key: bytes | None = None
    headers: list[Header] = field(default_factory=list)
    batch: bool = False
    raw: bytes | None = None  # READY batch: the handler's JSON list, split by the connector
    format: OutputFormat | None = None  # values are encoded on their way out (Avro)
    origin: str = ""  # with a format: "topic:partition:offset" of the input, for dead letters
    lane: int = 0  # the input it answers (0: none, a kafka_send): order is kept per lane
    _schema: ClassVar = (
        (1, "state", UINT),
        (2, "records", REP_MSG, OutboxRecord),
        (3, "topic", STRING),
        (4, "key", OPT_BYTES),
        (5, "headers", REP_MSG, Header),
        (6, "batch", BOOL),
        (7, "raw", OPT_BYTES),
        (8, "format", MSG, OutputFormat),
        (9, "origin", STRING),
        (10, "lane", UINT),
    )


@dataclass(slots=True)
class EgressTarget(Message):
    """Where a subscription sends its handler's results (KafkaIngest.output)."""

    cluster: str = ""
    topic: str = ""
    headers: list[Header] = field(default_factory=list)
    format: OutputFormat | None = None
    _schema: ClassVar = (
        (1, "cluster", STRING),
        (2, "topic", STRING),
        (3, "headers", REP_MSG, Header),
        (4, "format", MSG, OutputFormat),
    )


@dataclass(slots=True)
class KafkaBatch(Message):
    """Up to ``batch_max`` records of one partition for a stream handler, packed once by the
    consumer: ``items`` is the records' JSON objects joined by commas, ``ends[j]`` the end
    of the j-th, so a batch that partly overlaps what was ingested can be cut."""

    packed_offsets: bytes = b""  # u64 little-endian each (an array, not a varint per record)
    packed_ends: bytes = b""
    items: bytes = b""
    _schema: ClassVar = (
        (1, "packed_offsets", BYTES),
        (2, "packed_ends", BYTES),
        (3, "items", BYTES),
    )

    @property
    def offsets(self) -> list[int]:
        return unpack_u64(self.packed_offsets)

    @property
    def ends(self) -> list[int]:
        return unpack_u64(self.packed_ends)


def pack_u64(values: list[int]) -> bytes:
    a = array("Q", values)
    if sys.byteorder == "big":
        a.byteswap()
    return a.tobytes()


def unpack_u64(data: bytes) -> list[int]:
    a = array("Q")
    a.frombytes(data)
    if sys.byteorder == "big":
        a.byteswap()
    return a.tolist()


@dataclass(slots=True)
class FailedRecord(Message):
    """A record of row ``seq`` (its ``part``-th) whose value its format could not encode."""

    seq: int = 0
    part: int = 0
    key: bytes | None = None
    value: bytes | None = None
    reason: str = ""
    _schema: ClassVar = (
        (1, "seq", UINT),
        (2, "part", UINT),
        (3, "key", OPT_BYTES),
        (4, "value", OPT_BYTES),
        (5, "reason", STRING),
    )


@dataclass(slots=True)
class EgressCommitted(Message):
    """The sink (cluster, egress partition) committed every row up to ``upto`` and the rows
    ``seqs`` past it (of lanes that went on past a PENDING row): trim them. ``failed``:
    records of those rows that were not sent (their value did not fit the row's format);
    they are dead-lettered in the same write as the trim."""

    cluster: str = ""
    sink: int = 0
    upto: int = 0
    failed: list[FailedRecord] = field(default_factory=list)
    seqs: list[int] = field(default_factory=list)
    waiter: int = 0
    _schema: ClassVar = (
        (1, "cluster", STRING),
        (2, "sink", UINT),
        (3, "upto", UINT),
        (4, "failed", REP_MSG, FailedRecord),
        (5, "seqs", REP_UINT),
        (6, "waiter", UINT),
    )


@dataclass(slots=True)
class EgressIdentity(Message):
    """The node's egress identity (``broker/egress.py``), kept in the ``meta`` table through
    the log: durable like any command, and the same when the tables are rebuilt from it."""

    node: str = ""
    waiter: int = 0
    _schema: ClassVar = ((1, "node", STRING), (2, "waiter", UINT))


EGRESS_NODE_KEY = b"egress_node\0"  # in ``meta``


def outbox_prefix(cluster: str, sink: int) -> bytes:
    return cluster.encode() + b"\0" + _U32.pack(sink)


def outbox_key(cluster: str, sink: int, seq: int) -> bytes:
    return outbox_prefix(cluster, sink) + _U64.pack(seq)


def released_key(row: bytes) -> bytes:
    """The ``meta`` key of a released row (the module's docstring), by its outbox key."""
    return b"outbox_released\0" + row


def parse_outbox_key(key: bytes) -> tuple[str, int, int]:
    """(cluster, sink, seq) of an outbox row key."""
    cut = key.index(b"\0")
    return key[:cut].decode(), _U32.unpack_from(key, cut + 1)[0], _U64.unpack_from(key, cut + 5)[0]


@dataclass(slots=True)
class OutboxReady:
    """Action: rows of this sink became sendable (READY or EMPTY)."""

    cluster: str
    sink: int
