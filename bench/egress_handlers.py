"""The Sluice SDK handlers of bench/kafka_egress.py: a stream handler (declared with
``sluice.Batch``: up to 500 records of one partition in, a list of records out) and a
per-record map, both stateless. ``GET /first``
(outside the endpoint) gives, per input topic, when the first record reached a handler."""

from __future__ import annotations

import json
import time
from typing import Any

import sluice
from sluice import Context, OutputRecord, RecordBatch, Service

first: dict[str, float] = {}

stream = Service("BenchStream")


@stream.handler(batch=sluice.Batch(max_records=500, max_ms=100))
async def batch(ctx: Context, batch: RecordBatch) -> list[OutputRecord]:
    first.setdefault(batch.topic, time.time())
    return [
        OutputRecord({"i": r.value["i"], "by": "sluice-stream"}, key=r.key) for r in batch.records
    ]


per_record = Service("BenchMap")


@per_record.handler()
async def map(ctx: Context, rec: dict[str, Any]) -> dict[str, Any]:
    first.setdefault(ctx.request().headers.get("kafka.topic", ""), time.time())
    return {"i": rec["i"], "by": "sluice-record"}


_endpoint = sluice.app(stream, per_record)


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "http" and scope["path"] == "/first":
        body = json.dumps(first).encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json")]})  # fmt: skip
        await send({"type": "http.response.body", "body": body})
        return
    await _endpoint(scope, receive, send)
