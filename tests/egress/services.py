"""Handlers for the egress tests, written with the Sluice SDK: a stateless map (and an echo),
a per-key virtual object, handlers that send with ``ctx.kafka_send`` (JSON and Avro), and
stream handlers (declared on the subscription, and in the SDK), and one that fails while a
file exists."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import sluice
from sluice import Context, ObjectContext, Service, VirtualObject

enrich = Service("Enrich")


@enrich.handler()
async def map(ctx: Context, rec: dict[str, Any]) -> dict[str, Any]:
    return {"i": rec["i"], "by": "enrich"}


@enrich.handler()
async def echo(ctx: Context, rec: dict[str, Any]) -> dict[str, Any]:
    """The input as the result: the test decides which results fit an output schema."""
    return rec


tally = VirtualObject("Tally")


@tally.handler()
async def add(ctx: ObjectContext, rec: dict[str, Any]) -> dict[str, Any]:
    """Count the key's records and keep a running sum of their ``v``; emit both."""
    n = (await ctx.get("n", type_hint=int) or 0) + 1
    total = (await ctx.get("sum", type_hint=int) or 0) + int(rec.get("v", 0))
    ctx.set("n", n)
    ctx.set("sum", total)
    return {"i": rec["i"], "n": n, "sum": total, "key": ctx.key()}


sender = Service("Sender")


@sender.handler()
async def send(ctx: Context, rec: dict[str, Any]) -> None:
    for j in range(rec.get("copies", 1)):
        ctx.kafka_send(
            rec["topic"], rec["key"], {"i": rec["i"], "j": j}, headers={"origin": "sender"}
        )


@sender.handler()
async def send_avro(ctx: Context, rec: dict[str, Any]) -> None:
    ctx.kafka_send(rec["topic"], rec["key"], rec["value"], avro_schema=rec["subject"])


stream = Service("Stream")


@stream.handler()
async def batch(ctx: Context, batch: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {"key": r["key"], "value": {"i": r["value"]["i"], "by": "stream"}} for r in batch["records"]
    ]


declared = Service("Declared")


@declared.handler(batch=sluice.Batch(max_records=7, max_ms=50))
async def enrich_batch(ctx: Context, batch: sluice.RecordBatch) -> list[sluice.OutputRecord]:
    """A stream handler declared in the SDK; each output names its batch (input partition,
    first offset, size) so that the test can check how records were batched."""
    first, size = batch.records[0].offset, len(batch.records)
    return [
        sluice.OutputRecord(
            {
                "i": r.value["i"],
                "offset": r.offset,
                "partition": batch.partition,
                "first": first,
                "size": size,
            },
            key=r.key,
            headers={"batch-topic": batch.topic},
        )
        for r in batch.records
    ]


held = Service("Held")


@held.handler()
async def run(ctx: Context, rec: dict[str, Any]) -> dict[str, Any]:
    """Fails (to be retried) while the file named by ``rec["hold"]`` exists."""
    hold = rec.get("hold")
    if hold and await asyncio.to_thread(os.path.exists, hold):
        raise RuntimeError(f"held by {hold}")
    return rec


app = sluice.app(enrich, tally, sender, stream, declared, held)
