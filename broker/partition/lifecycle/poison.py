"""A Kafka batch the state machine cannot apply still ends somewhere.

The processor skips a log entry that fails to apply twice (a bug, deterministic). For a
``KafkaIngest`` that would be silent loss: no invocation, no dead letter, and the next
batch of the same partition moves the dedup position (and so the committed offset) past
the skipped records. Instead, each record above the dedup position becomes a dead letter
(or, without a dead-letter topic, a failed invocation in the admin API) whose reason names
the failure, the position moves past them, and the consumer gets its reply.
"""

from __future__ import annotations

import base64
import json

from sluice import protocol as p
from sluice.connectors.serde import decode_key

from .._context import Ctx
from .._outbox import KafkaBatch
from .._positions import advance, begin
from .._records import KafkaIngest, KafkaRecord
from .kafka import _dead_letter_record


def unappliable_ingest(ctx: Ctx, cmd: KafkaIngest, reason: str) -> None:
    pos = begin(ctx.tx, cmd.producer, cmd.epoch, cmd.topic_id)
    if pos is None:  # stale: read before the topic was found recreated
        ctx.reply(cmd.waiter, "ok", message="0")
        return
    last = pos.last
    records = [r for r in cmd.records if r.offset > last]
    for b in cmd.batches:
        records += [r for r in _unpack(b) if r.offset > last]
    top = last
    for rec in sorted(records, key=lambda r: r.offset):
        if rec.raw_value is None and not rec.reason:
            rec.raw_value = rec.input
        if rec.raw_key is None and (rec.key or _has_key(rec)):
            rec.raw_key = decode_key(rec.key)
        rec.headers = [h for h in rec.headers if not h.key.startswith("kafka.")]
        rec.reason = f"the broker could not apply this record, so it was not invoked: {reason}"
        _dead_letter_record(ctx, cmd, rec)
        top = max(top, rec.offset)
    advance(ctx.tx, cmd.producer, pos, top)
    ctx.reply(cmd.waiter, "ok", message="0")


def _has_key(rec: KafkaRecord) -> bool:
    return any(h.key == "kafka.key" for h in rec.headers)


def _unpack(batch: KafkaBatch) -> list[KafkaRecord]:
    """The records of a stream handler's packed batch (lifecycle/egress.py ``_Packer``)."""
    out = []
    start = 0
    for offset, end in zip(batch.offsets, batch.ends, strict=True):
        chunk = batch.items[start:end]
        start = end + 1  # the comma between items
        try:
            item = json.loads(chunk)
            value = (
                base64.b64decode(item["value_b64"])
                if "value_b64" in item
                else json.dumps(item["value"]).encode()
            )
            key = item.get("key")
            headers = [p.Header(key=k, value=v) for k, v in (item.get("headers") or {}).items()]
            out.append(
                KafkaRecord(
                    offset=offset,
                    raw_key=decode_key(key) if isinstance(key, str) else None,
                    raw_value=value,
                    headers=headers,
                )
            )
        except (ValueError, KeyError, TypeError):
            out.append(KafkaRecord(offset=offset, raw_value=bytes(chunk)))  # as packed
    return out
