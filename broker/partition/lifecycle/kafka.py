"""Kafka ingress in the state machine: deduplicated record batches, subscription rows, and
dead letters.

    KafkaIngest(producer, records) ──► for each record with offset > kafka_dedup[producer]:
        decodable   ─► Invoke (sink = KAFKA) ──► ... ──► answer(): failure ─► dead letter
        undecodable ─► dead letter
      kafka_dedup[producer] = last offset          (all in the same write batch as the log
                                                    position, so a replay skips them)
    dead letter ─► kafka_dlq row + DeadLetterPending   (a topic is configured)
                ─► a completed, failed invocation      (no topic: visible in the admin API)
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from typing import ClassVar

from sluice import protocol as p
from sluice.broker.ids import InvocationId, partition_key_of
from sluice.connectors.serde import decode_key
from sluice.protocol._proto import OPT_BYTES, REP_MSG, STRING

from .. import actions as a
from .._context import Ctx, failure
from .._positions import KafkaPosition, advance, begin
from .._records import (
    DeadLettered,
    Invoke,
    KafkaIngest,
    KafkaRecord,
    Kind,
    Phase,
    Sink,
    SinkKind,
    Status,
    SubscriptionUpdate,
)
from . import egress, shuffle
from .complete import complete
from .invoke import invoke

_U64 = struct.Struct(">Q")

# How long a failed Kafka invocation stays visible in the admin API when there is no
# dead-letter topic.
FAILED_RETENTION_MS = 7 * 86_400_000

# Header names of a dead-letter record.
H_SUBSCRIPTION = "sluice-dlq-subscription"
H_TOPIC = "sluice-dlq-topic"
H_PARTITION = "sluice-dlq-partition"
H_OFFSET = "sluice-dlq-offset"
H_REASON = "sluice-dlq-reason"
H_INVOCATION = "sluice-dlq-invocation-id"


@dataclass(slots=True)
class DeadLetter(p.Message):
    """A ``kafka_dlq`` row: the record to produce, and the cluster to produce it to (its
    subscription's, kept here: the row outlives a deleted subscription)."""

    topic: str = ""
    key: bytes | None = None
    value: bytes | None = None
    headers: list[p.Header] = field(default_factory=list)
    cluster: str = ""
    _schema: ClassVar = (
        (1, "topic", STRING),
        (2, "key", OPT_BYTES),
        (3, "value", OPT_BYTES),
        (4, "headers", REP_MSG, p.Header),
        (5, "cluster", STRING),
    )


def ingest(ctx: Ctx, cmd: KafkaIngest) -> None:
    if cmd.batch_max:
        egress.ingest_batches(ctx, cmd)  # a stream handler: one invocation per batch
        return
    pos = begin(ctx.tx, cmd.producer, cmd.epoch, cmd.topic_id)
    if pos is None:  # read before the topic was found recreated (_positions.py)
        ctx.reply(cmd.waiter, "ok", message="0")
        return
    last = pos.last
    created = 0
    for rec in cmd.records:
        if rec.offset <= last:
            continue  # already in the log once: the producer (a consumer) sent it again
        last = rec.offset
        if rec.reason:
            _dead_letter_record(ctx, cmd, rec)
            continue
        keyed = cmd.kind != Kind.SERVICE
        pk = partition_key_of(rec.key) if keyed else partition_key_of(cmd.producer)
        # Ids are deterministic: a record read twice (a crash before the offset commit)
        # finds its invocation; a re-created subscription (from=earliest) gets new ones.
        iid = InvocationId.derive(
            pk, "kafka", cmd.producer, _U64.pack(cmd.generation), *pos.id_parts(),
            _U64.pack(rec.offset),
        )  # fmt: skip
        here = ctx.owner(iid.raw) == ctx.partition
        if here and ctx.status(iid.raw) is not None:
            continue
        call = Invoke(
            id=iid.raw,
            service=cmd.service,
            handler=cmd.handler,
            key=rec.key if keyed else "",
            kind=cmd.kind,
            input=rec.input,
            headers=rec.headers,
            sink=Sink(
                kind=SinkKind.KAFKA,
                subscription=cmd.subscription,
                dead_letter_topic=cmd.dead_letter_topic,
                outbox=egress.reserve_for(ctx, cmd, rec),
                outbox_partition=ctx.partition,
            ),
        )
        if not here:
            # The key's partition owns the invocation (and sends its KafkaDone); a record it
            # receives twice finds the invocation there.
            shuffle.route(ctx, iid.raw, call)
            created += 1
            continue
        invoke(ctx, call)
        new = ctx.status(iid.raw)
        if new is not None and new.phase != Phase.COMPLETED:
            created += 1  # in flight until its KafkaDone (not: failed at once, e.g. no handler)
    advance(ctx.tx, cmd.producer, pos, last)
    ctx.reply(cmd.waiter, "ok", message=str(created))


def answer(ctx: Ctx, sink: Sink, id: bytes, fail: p.Failure | None) -> None:
    """The completion of an invocation created from a Kafka record."""
    ctx.actions.append(a.KafkaDone(sink.subscription))
    if fail is None:
        return
    st = ctx.status(id)
    if st is None:
        return
    if not sink.dead_letter_topic:
        # complete() keeps the row for this long after answering its sinks: the failure stays
        # visible in the admin API instead of vanishing with the journal.
        st.retention_ms = FAILED_RETENTION_MS
        st.last_failure = f"[{fail.code}] {fail.message}"[:2000]
        return
    first = next(iter(ctx.journal(st)), None)
    inp = p.decode_all(first)[0].message if first is not None else None
    headers = list(inp.headers) if isinstance(inp, p.InputCommand) else []
    value = inp.value if isinstance(inp, p.InputCommand) else None
    meta = {h.key: h.value for h in headers if h.key.startswith("kafka.")}
    key = decode_key(meta["kafka.key"]) if "kafka.key" in meta else None
    put_dead_letter(
        ctx,
        id,
        DeadLetter(
            topic=sink.dead_letter_topic,
            key=key,
            value=value,
            headers=[h for h in headers if not h.key.startswith("kafka.")]
            + dlq_headers(
                sink.subscription,
                meta.get("kafka.topic", ""),
                meta.get("kafka.partition", ""),
                meta.get("kafka.offset", ""),
                f"handler failed terminally: [{fail.code}] {fail.message}",
            )
            + [p.Header(key=H_INVOCATION, value=str(InvocationId(id)))],
        ),
    )


def _epoch(cmd: KafkaIngest) -> tuple[bytes, ...]:
    return KafkaPosition(epoch=cmd.epoch).id_parts()


def _dead_letter_record(ctx: Ctx, cmd: KafkaIngest, rec: KafkaRecord) -> None:
    if cmd.dead_letter_topic:
        put_dead_letter(
            ctx,
            # (an epoch after the first: offsets begin again, _positions.py)
            cmd.producer + _U64.pack(rec.offset) + b"".join(_epoch(cmd)),
            DeadLetter(
                topic=cmd.dead_letter_topic,
                key=rec.raw_key,
                value=rec.raw_value,
                headers=rec.headers
                + dlq_headers(
                    cmd.subscription, cmd.topic, str(cmd.partition), str(rec.offset), rec.reason
                ),
            ),
        )
        return
    # No dead-letter topic: a failed invocation that an operator finds in the admin API.
    pk = partition_key_of(cmd.producer)
    iid = InvocationId.derive(
        pk, "kafka", cmd.producer, _U64.pack(cmd.generation), *_epoch(cmd), _U64.pack(rec.offset)
    )
    st = Status(
        id=iid.raw,
        service=cmd.service,
        handler=cmd.handler,
        key=rec.key,
        kind=Kind.SERVICE,  # it never held its key
        created_at=ctx.now,
        retention_ms=FAILED_RETENTION_MS,
        last_failure=f"[400] {rec.reason}",
    )
    complete(
        ctx,
        st,
        None,
        failure(400, f"kafka record {cmd.topic}/{cmd.partition}@{rec.offset}: {rec.reason}"),
    )


def dlq_headers(sub: str, topic: str, partition: str, offset: str, reason: str) -> list[p.Header]:
    return [
        p.Header(key=H_SUBSCRIPTION, value=sub),
        p.Header(key=H_TOPIC, value=topic),
        p.Header(key=H_PARTITION, value=partition),
        p.Header(key=H_OFFSET, value=offset),
        p.Header(key=H_REASON, value=reason[:1000]),
    ]


def source_cluster(source: str) -> str:
    """The cluster of a subscription's source, ``kafka://CLUSTER/TOPIC``."""
    return source.removeprefix("kafka://").split("/", 1)[0]


def put_dead_letter(ctx: Ctx, key: bytes, row: DeadLetter) -> None:
    if not row.cluster:
        name = next((h.value for h in row.headers if h.key == H_SUBSCRIPTION), "")
        sub = ctx.tx.get("subscriptions", name.encode())
        if sub is not None:
            row.cluster = source_cluster(str(json.loads(sub).get("source", "")))
    ctx.tx.put("kafka_dlq", key, row.encode())
    ctx.actions.append(a.DeadLetterPending(key))


def dead_lettered(ctx: Ctx, cmd: DeadLettered) -> None:
    for key in cmd.keys:
        ctx.tx.delete("kafka_dlq", key)


def update(ctx: Ctx, cmd: SubscriptionUpdate) -> None:
    """A cluster or subscription row changed (in every partition); ``reset`` drops the
    positions of a re-created subscription's partitions."""
    if cmd.table not in ("kafka_clusters", "subscriptions"):
        ctx.reply(cmd.waiter, "error", code=400, message=f"unknown table {cmd.table!r}")
        return
    if cmd.row:
        ctx.tx.put(cmd.table, cmd.name.encode(), cmd.row)
    else:
        ctx.tx.delete(cmd.table, cmd.name.encode())
    if cmd.reset:
        for k, _ in ctx.tx.scan("kafka_dedup", cmd.reset):
            ctx.tx.delete("kafka_dedup", k)
    ctx.reply(cmd.waiter, "ok", message=cmd.name)
    ctx.actions.append(a.SubscriptionsChanged())


# The dedup table's key: 8 bytes per part, so that a subscription's rows share a prefix.
def producer_id(subscription: str, topic: str, partition: int) -> bytes:
    return subscription_prefix(subscription) + _h8(topic) + struct.pack(">I", partition)


def subscription_prefix(subscription: str) -> bytes:
    return _h8(subscription)


def _h8(text: str) -> bytes:
    return _U64.pack(partition_key_of(text))
