"""Kafka egress in the state machine: outbox rows written in the same batch as the results.

Two ways in, both deterministic:
- a subscription with an output topic reserves a row per record (or per batch) in input
  order when it ingests it; the invocation's completion fills it (``fill``);
- ``sluice.Kafka/send``, a one-way call to a built-in service (``ctx.kafka_send`` in the
  Sluice SDK, ``ctx.generic_send`` in restate-sdk), appends a READY row at once.
The egress connector sends rows and trims them with EgressCommitted (``committed``).
"""

from __future__ import annotations

import base64
import json
import re
import struct
from collections.abc import Callable
from typing import Any

from sluice import protocol as p
from sluice.broker.ids import InvocationId, partition_key_of
from sluice.connectors.serde import KEY_PREFIX, decode_key, encode_key, is_json

from .._context import Ctx, failure
from .._outbox import (
    EGRESS_NODE_KEY,
    EgressCommitted,
    EgressIdentity,
    EgressTarget,
    FailedRecord,
    KafkaBatch,
    OutboxEntry,
    OutboxReady,
    OutboxRecord,
    OutboxState,
    OutputFormat,
    outbox_key,
    outbox_prefix,
    pack_u64,
    parse_outbox_key,
    released_key,
)
from .._positions import advance, begin
from .._records import Invoke, KafkaIngest, KafkaRecord, Kind, Sink, SinkKind, Status
from .complete import complete
from .invoke import invoke

_U64 = struct.Struct(">Q")

# Egress partitions per cluster: one transactional producer each. Fixed: a row's partition
# is part of its key, and its sequence numbers are the partition's. One: with four, output
# partitions interleave transactions of several producers, and on Tansu a producer killed
# mid-transaction twice left a transaction that its re-initialized successor never resolved
# (read_committed readers stuck behind it, tests/egress/test_crash.py); with one producer per
# cluster it has not happened. A single sink measured as fast (bench/kafka_egress.py).
EGRESS_PARTITIONS = 1

# The built-in service whose one-way calls become Kafka records.
KAFKA_SERVICE = "sluice.Kafka"
KAFKA_SEND = "send"
EGRESS_HANDLER = "egress"  # the handler named by failed records that had no dead-letter topic

# A dead letter of an output record: the output topic it was meant for.
H_OUTPUT_TOPIC = "sluice-dlq-output-topic"

_NEXT = b"outbox_next\0"


def sink_of(routing: bytes) -> int:
    """The egress partition of a record key (or of another routing value)."""
    return partition_key_of(routing) % EGRESS_PARTITIONS


def _next_seq(ctx: Ctx, cluster: str, sink: int) -> int:
    k = _NEXT + outbox_prefix(cluster, sink)
    raw = ctx.tx.get("meta", k)
    n = _U64.unpack(raw)[0] + 1 if raw is not None else 1
    ctx.tx.put("meta", k, _U64.pack(n))
    return n


def reserve(
    ctx: Ctx,
    target: EgressTarget,
    sink: int,
    key: bytes | None,
    *,
    batch: bool = False,
    origin: str = "",
    lane: int = 0,
) -> bytes:
    """A PENDING row for an invocation's result, in input order in its ``lane``; returns
    its key. ``origin`` ("topic:partition:offset" of the input) is kept only with a format,
    for the dead letters of values that do not fit it."""
    seq = _next_seq(ctx, target.cluster, sink)
    k = outbox_key(target.cluster, sink, seq)
    entry = OutboxEntry(
        state=OutboxState.PENDING,
        topic=target.topic,
        key=key,
        headers=list(target.headers),
        batch=batch,
        format=target.format,
        origin=origin if target.format is not None else "",
        lane=lane,
    )
    ctx.tx.put("outbox", k, entry.encode())
    return k


def lane_of(producer: bytes) -> int:
    """The lane of an input (a subscription's partition): never 0, the lane of sends."""
    return partition_key_of(producer) or 1


def release(ctx: Ctx, key: bytes) -> None:
    """The invocation that reserved ``key`` is paused: its PENDING row leaves the outbox, so
    that the later rows of its lane go on (``_outbox``'s docstring)."""
    raw = ctx.tx.get("outbox", key)
    if raw is None or OutboxEntry.decode(raw).state != OutboxState.PENDING:
        return
    ctx.tx.delete("outbox", key)
    ctx.tx.put("meta", released_key(key), raw)
    cluster, sink, _ = parse_outbox_key(key)
    ctx.actions.append(OutboxReady(cluster, sink))


def fill(ctx: Ctx, key: bytes, value: bytes | None, fail: p.Failure | None) -> None:
    """The invocation that reserved ``key`` ended: its result becomes records (or nothing).
    A released row (its invocation was paused) joins the end of its lane now."""
    raw = ctx.tx.get("outbox", key)
    if raw is None:
        held = released_key(key)
        raw = ctx.tx.get("meta", held)
        if raw is None:
            return
        ctx.tx.delete("meta", held)
        cluster, sink, _ = parse_outbox_key(key)
        key = outbox_key(cluster, sink, _next_seq(ctx, cluster, sink))
    entry = OutboxEntry.decode(raw)
    if entry.state != OutboxState.PENDING:
        return
    records: list[OutboxRecord] = []
    if fail is None and value is not None and value.strip() not in (b"", b"null", b"[]"):
        if entry.batch:
            entry.state = OutboxState.READY
            entry.raw = value
            ctx.tx.put("outbox", key, entry.encode())
            cluster, sink, _ = parse_outbox_key(key)
            ctx.actions.append(OutboxReady(cluster, sink))
            return
        records = [
            OutboxRecord(topic=entry.topic, key=entry.key, value=value, headers=list(entry.headers))
        ]
    out = OutboxEntry(
        state=OutboxState.READY if records else OutboxState.EMPTY, records=records, lane=entry.lane
    )
    if records:
        out.format, out.origin = entry.format, entry.origin
    ctx.tx.put("outbox", key, out.encode())
    cluster, sink, _ = parse_outbox_key(key)
    ctx.actions.append(OutboxReady(cluster, sink))


def records_of(entry: OutboxEntry) -> list[OutboxRecord]:
    """The records of a READY row, in order (their index is the ``sluice-part`` header)."""
    if entry.batch and entry.raw is not None:
        return _batch_records(entry, entry.raw)
    return entry.records


def _batch_records(entry: OutboxEntry, value: bytes) -> list[OutboxRecord]:
    """A stream handler's result: a JSON list of records ({"value", "key"?, "headers"?,
    "topic"?}); anything else is one record holding the whole value. Deterministic: the
    same bytes always give the same records."""
    try:
        items = json.loads(value)
    except ValueError:
        items = None
    if not isinstance(items, list):
        return [OutboxRecord(topic=entry.topic, key=None, value=value, headers=list(entry.headers))]
    return [batch_item(entry, item) for item in items]


compact_json = json.JSONEncoder(separators=(",", ":")).encode


def inline_value(item: dict[str, Any]) -> bytes | None:
    """A record item's value bytes from "value" (any JSON, encoded here) or "value_json"
    (JSON text, sent as it is); None when neither holds one (null, absent, not JSON)."""
    if item.get("value") is not None:
        return compact_json(item["value"]).encode()
    if item.get("value_json") is not None:
        text = str(item["value_json"]).encode()
        return text if is_json(text) else None
    return None


def batch_item(entry: OutboxEntry, item: Any) -> OutboxRecord:
    """One element of a stream handler's result list as a record."""
    if isinstance(item, dict) and ("value" in item or "value_json" in item or "value_b64" in item):
        try:
            return _record(item, entry.topic, list(entry.headers))
        except (ValueError, TypeError):
            pass  # not a record after all: sent as the value it is
    return OutboxRecord(
        topic=entry.topic, key=None, value=compact_json(item).encode(), headers=list(entry.headers)
    )


def _record(item: dict[str, Any], topic: str, headers: list[p.Header]) -> OutboxRecord:
    """A record described in JSON: value (any JSON), value_json (JSON text, as the Sluice
    SDK writes it: the broker need not encode it again) or value_b64, key or key_b64,
    headers."""
    if item.get("value_b64") is not None:
        value: bytes | None = base64.b64decode(item["value_b64"])
    else:
        value = inline_value(item)
        if value is None and item.get("value") is None and item.get("value_json") is not None:
            raise ValueError("value_json is not JSON text")
    if item.get("key_b64") is not None:
        key: bytes | None = base64.b64decode(item["key_b64"])
    elif item.get("key") is not None:
        key = str(item["key"]).encode()
    else:
        key = None
    hs = item.get("headers") or {}
    if not isinstance(hs, dict):
        raise ValueError("headers must be an object of strings")
    return OutboxRecord(
        topic=str(item.get("topic") or topic),
        key=key,
        value=value,
        headers=headers + [p.Header(key=str(k), value=str(v)) for k, v in hs.items()],
    )


def append(
    ctx: Ctx,
    cluster: str,
    sink: int,
    records: list[OutboxRecord],
    fmt: OutputFormat | None = None,
) -> None:
    seq = _next_seq(ctx, cluster, sink)
    entry = OutboxEntry(state=OutboxState.READY, records=records, format=fmt)  # (lane 0)
    ctx.tx.put("outbox", outbox_key(cluster, sink, seq), entry.encode())
    ctx.actions.append(OutboxReady(cluster, sink))


def identity(ctx: Ctx, cmd: EgressIdentity) -> None:
    """The first identity written stays (a later one, from a damaged file, does not win)."""
    if ctx.tx.get("meta", EGRESS_NODE_KEY) is None:
        ctx.tx.put("meta", EGRESS_NODE_KEY, cmd.node.encode())
    ctx.reply(cmd.waiter, "ok")


def committed(ctx: Ctx, cmd: EgressCommitted) -> None:
    """Trim the sink's rows up to ``upto`` and those in ``seqs`` (they are in Kafka, with the
    sink's marker), and dead-letter the records of those rows that could not be encoded: in
    the same write, and only while their row is here (a repeated EgressCommitted finds none,
    adds none)."""
    prefix = outbox_prefix(cmd.cluster, cmd.sink)
    trimmed = set(cmd.seqs)
    for f in cmd.failed:
        raw = ctx.tx.get("outbox", outbox_key(cmd.cluster, cmd.sink, f.seq))
        if raw is not None and (f.seq <= cmd.upto or f.seq in trimmed):
            _unsendable(ctx, outbox_key(cmd.cluster, cmd.sink, f.seq), OutboxEntry.decode(raw), f)
    for seq in cmd.seqs:
        ctx.tx.delete("outbox", outbox_key(cmd.cluster, cmd.sink, seq))
    for k, _ in ctx.tx.scan("outbox", prefix):
        if len(k) != len(prefix) + 8:
            continue
        if _U64.unpack_from(k, len(prefix))[0] > cmd.upto:
            break
        ctx.tx.delete("outbox", k)
    ctx.reply(cmd.waiter, "ok")


def _unsendable(ctx: Ctx, row: bytes, entry: OutboxEntry, f: FailedRecord) -> None:
    """A record whose value does not fit its row's format: to the subscription's dead-letter
    topic (headers as for ingress, plus the output topic), else a failed invocation."""
    from .kafka import (  # lazy: kafka.py imports this module
        FAILED_RETENTION_MS,
        DeadLetter,
        dlq_headers,
        put_dead_letter,
    )

    fmt = entry.format or OutputFormat()
    records = records_of(entry)
    rec = records[f.part] if f.part < len(records) else None
    out_topic = rec.topic if rec is not None else entry.topic
    head, _, offset = entry.origin.rpartition(":")
    topic, _, partition = head.rpartition(":")
    reason = f"output serde {fmt.serde} for topic {out_topic}: {f.reason}"
    part_key = row + struct.pack(">I", f.part)
    if fmt.dead_letter_topic and fmt.subscription:
        headers = list(rec.headers) if rec is not None else []
        put_dead_letter(
            ctx,
            part_key,
            DeadLetter(
                topic=fmt.dead_letter_topic,
                key=f.key,
                value=f.value,
                headers=headers
                + dlq_headers(fmt.subscription, topic, partition, offset, reason)
                + [p.Header(key=H_OUTPUT_TOPIC, value=out_topic)],
            ),
        )
        return
    iid = InvocationId.derive(partition_key_of(part_key), "kafka-egress", part_key)
    st = Status(
        id=iid.raw,
        service=KAFKA_SERVICE,
        handler=EGRESS_HANDLER,
        kind=Kind.SERVICE,
        created_at=ctx.now,
        retention_ms=FAILED_RETENTION_MS,
        last_failure=f"[400] {reason}"[:2000],
    )
    complete(ctx, st, None, failure(400, reason))


def default_cluster(ctx: Ctx) -> str:
    """The cluster of a send that names none: the only one, or the one named "default"."""
    names: list[str] = [k.decode() for k, _ in ctx.tx.scan("kafka_clusters", b"")]
    if len(names) == 1:
        return names[0]
    return "default"


def kafka_send(ctx: Ctx, st: Status, cmd: p.OneWayCallCommand) -> None:
    """``sluice.Kafka/send``: the parameter (JSON) is a record; it joins the outbox now."""
    seed = st.id + st.journal_len.to_bytes(4, "big")
    iid = InvocationId.derive(partition_key_of(seed), "kafka-send", seed)
    ctx.notify(
        st.id,
        p.CallInvocationIdCompletionNotification(
            completion_id=cmd.invocation_id_notification_idx, invocation_id=str(iid)
        ),
    )
    try:
        body = json.loads(cmd.parameter or b"null")
        if not isinstance(body, dict) or not isinstance(body.get("topic"), str):
            raise ValueError('expected a JSON object with "topic" (and "key", "value", "headers")')
        rec = _record(body, body["topic"], [])
        fmt = _send_format(body)
    except (ValueError, TypeError) as e:
        complete(ctx, st, None, failure(400, f"{KAFKA_SERVICE}/{KAFKA_SEND}: {e}"))
        return
    cluster = str(body.get("cluster") or default_cluster(ctx))
    sink = sink_of(rec.key if rec.key is not None else st.id)
    append(ctx, cluster, sink, [rec], fmt)


def _send_format(body: dict[str, Any]) -> OutputFormat | None:
    """``avro_schema`` of a send: a registry subject or a schema (JSON), in the cluster's
    registry; the value (JSON) is encoded on its way out."""
    schema = body.get("avro_schema")
    if schema is None:
        return None
    if not isinstance(schema, (str, dict, list)) or not schema:
        raise ValueError("avro_schema: expected a registry subject or an Avro schema")
    text = schema if isinstance(schema, str) else compact_json(schema)
    return OutputFormat(serde="avro", schema=text, subject=f"{body['topic']}-value")


# --- subscriptions with an output topic ------------------------------------------------------


def reserve_for(ctx: Ctx, cmd: KafkaIngest, rec: KafkaRecord) -> bytes:
    """The outbox row for one record's invocation (b"": the subscription has no output).

    Every record of an input partition reserves in the same egress partition, in offset
    order, so results leave in input order (per key and per partition)."""
    if cmd.output is None:
        return b""
    has_key = any(h.key == "kafka.key" for h in rec.headers)
    key = decode_key(rec.key) if has_key else None
    origin = f"{cmd.topic}:{cmd.partition}:{rec.offset}"
    return reserve(
        ctx, cmd.output, sink_of(cmd.producer), key, origin=origin, lane=lane_of(cmd.producer)
    )


def ingest_batches(ctx: Ctx, cmd: KafkaIngest) -> None:
    """A stream handler: each packed batch of one partition (up to ``batch_max`` records)
    becomes one invocation, deduplicated by its last offset (a batch that partly overlaps
    what was already ingested is cut); its result (a list of records) fills one outbox row,
    so it leaves in one egress transaction. ``cmd.records`` holds the records to
    dead-letter."""
    from .kafka import _dead_letter_record  # lazy: kafka.py imports this module

    pos = begin(ctx.tx, cmd.producer, cmd.epoch, cmd.topic_id)
    if pos is None:  # stale: read before the topic was found recreated
        ctx.reply(cmd.waiter, "ok", message="0")
        return
    last = top = pos.last
    for rec in cmd.records:
        if rec.offset > last:
            _dead_letter_record(ctx, cmd, rec)
            top = max(top, rec.offset)
    created = 0
    pk = partition_key_of(cmd.producer)
    keyed = cmd.kind != Kind.SERVICE
    for b in cmd.batches:
        offsets = b.offsets
        if not offsets or offsets[-1] <= last:
            continue
        first = 0
        while offsets[first] <= last:
            first += 1
        items = b.items if first == 0 else b.items[b.ends[first - 1] + 1 :]
        end = offsets[-1]
        top = max(top, end)
        iid = InvocationId.derive(
            pk, "kafka-batch", cmd.producer, _U64.pack(cmd.generation), *pos.id_parts(),
            _U64.pack(end),
        )  # fmt: skip
        if ctx.status(iid.raw) is not None:
            continue
        out = b""
        if cmd.output is not None:
            origin = f"{cmd.topic}:{cmd.partition}:{end}"
            out = reserve(
                ctx, cmd.output, sink_of(cmd.producer), None,
                batch=True, origin=origin, lane=lane_of(cmd.producer),
            )  # fmt: skip
        head = json.dumps({"topic": cmd.topic, "partition": cmd.partition})[:-1].encode()
        invoke(
            ctx,
            Invoke(
                id=iid.raw,
                service=cmd.service,
                handler=cmd.handler,
                key=f"{cmd.topic}/{cmd.partition}" if keyed else "",
                kind=cmd.kind,
                input=head + b',"records":[' + items + b"]}",
                headers=[
                    p.Header(key="kafka.topic", value=cmd.topic),
                    p.Header(key="kafka.partition", value=str(cmd.partition)),
                    p.Header(key="kafka.offset", value=str(offsets[first])),
                    p.Header(key="kafka.last-offset", value=str(end)),
                    p.Header(key="content-type", value="application/json"),
                ],
                sink=Sink(
                    kind=SinkKind.KAFKA,
                    subscription=cmd.subscription,
                    dead_letter_topic=cmd.dead_letter_topic,
                    outbox=out,
                    outbox_partition=ctx.partition,
                ),
            ),
        )
        created += 1
    advance(ctx.tx, cmd.producer, pos, top)
    ctx.reply(cmd.waiter, "ok", message=str(created))


def pack_batches(cmd: KafkaIngest) -> None:
    """Consumer side, once per poll: the decodable records of ``cmd`` become batches of up
    to ``cmd.batch_max`` JSON items (``{"offset", "key", "value" (JSON) or "value_b64",
    "headers"}``); the others stay in ``cmd.records``, to be dead-lettered."""
    dead: list[KafkaRecord] = []
    packer = _Packer(cmd)
    for rec in cmd.records:
        if rec.reason:
            dead.append(rec)
        else:
            packer.add(rec.offset, _item(rec))
    packer.finish()
    cmd.records = dead


class _Packer:
    """Cuts items into KafkaBatch messages of up to ``cmd.batch_max``."""

    def __init__(self, cmd: KafkaIngest) -> None:
        self.cmd = cmd
        self.items: list[bytes] = []
        self.offsets: list[int] = []
        self.ends: list[int] = []
        self.size = 0

    def add(self, offset: int, item: bytes) -> None:
        self.size += len(item) + (1 if self.items else 0)
        self.items.append(item)
        self.offsets.append(offset)
        self.ends.append(self.size)
        if len(self.items) >= self.cmd.batch_max:
            self.finish()

    def finish(self) -> None:
        if self.items:
            self.cmd.batches.append(
                KafkaBatch(
                    packed_offsets=pack_u64(self.offsets),
                    packed_ends=pack_u64(self.ends),
                    items=b",".join(self.items),
                )
            )
        self.items, self.offsets, self.ends, self.size = [], [], [], 0


_KEY_PREFIX = KEY_PREFIX.encode()
_PLAIN_KEY = re.compile(rb"[ !#-\[\]-~]*")  # printable ASCII but '"' and '\\': no escaping


def pack_messages(
    cmd: KafkaIngest,
    msgs: list[Any],
    record: Callable[[Any], KafkaRecord],
    *,
    max_bytes: int,
    keyed: bool,
) -> None:
    """Consumer side, JSON values: Kafka messages straight into packed batches, each value
    checked to be one JSON value; a message that fails a check goes through ``record`` (the
    consumer's own checks), which dead-letters it or gives the record to pack."""
    packer = _Packer(cmd)
    dead: list[KafkaRecord] = []
    for m in msgs:
        v, k = m.value, m.key
        ok = v is not None and len(v) + len(k or b"") <= max_bytes and (k is not None or not keyed)
        ok = ok and is_json(v)
        if ok and k is not None and (not _PLAIN_KEY.fullmatch(k) or k.startswith(_KEY_PREFIX)):
            ok = False  # escaping, not UTF-8, or b64:-like: the consumer encodes (or refuses) it
        if ok:
            key = b"null" if k is None else b'"' + k + b'"'
            headers = b"{}"
            if m.headers:
                headers = json.dumps({h: encode_key(x) if x else "" for h, x in m.headers}).encode()
            item = b'{"offset":%d,"key":%s,"value":%s,"headers":%s}' % (m.offset, key, v, headers)
        else:
            rec = record(m)
            if rec.reason:
                dead.append(rec)
                continue
            item = _item(rec)
        packer.add(m.offset, item)
    packer.finish()
    cmd.records = dead


def _item(rec: KafkaRecord) -> bytes:
    json_value = True
    headers = b"{}"
    if rec.headers:
        hs = {}
        for h in rec.headers:
            if h.key == "content-type":
                json_value = h.value == "application/json"
            elif not h.key.startswith("kafka."):
                hs[h.key] = h.value
        if hs:
            headers = json.dumps(hs).encode()
    has_key = rec.raw_key is not None or any(h.key == "kafka.key" for h in rec.headers)
    key = json.dumps(rec.key).encode() if has_key else b"null"
    if json_value and rec.input:
        value = b'"value":' + rec.input
    else:
        value = b'"value_b64":"' + base64.b64encode(rec.input) + b'"'
    return b'{"offset":%d,"key":%s,%s,"headers":%s}' % (rec.offset, key, value, headers)
