"""The handler service of the Kafka ingest benchmark (official restate-sdk), served by
hypercorn over h2c to both brokers. ``GET /stats`` (outside the Restate endpoint) tells when
the first record reached a handler and how many distinct records have been applied."""

from __future__ import annotations

import json
import time
from typing import Any

import restate
from restate import ObjectContext, VirtualObject

counter = VirtualObject("IngestCounter")


class _Stats:
    first: float | None = None
    last = 0.0
    seen: set[tuple[str, str]] = set()  # noqa: RUF012  (one process-wide instance)


stats = _Stats()


@counter.handler()
async def add(ctx: ObjectContext, rec: dict[str, Any]) -> None:
    n = (await ctx.get("count", type_hint=int)) or 0
    ctx.set("count", n + 1)
    h = ctx.request().headers
    # restate-server sends no kafka.* headers to the handler; the key and "i" identify a record.
    stats.seen.add((h.get("kafka.partition", ""), str(rec.get("i"))))
    now = time.time()
    if stats.first is None:
        stats.first = now
    stats.last = now


_restate = restate.app(services=[counter])


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "http" and scope["path"] == "/stats":
        if scope["method"] == "DELETE":
            stats.first, stats.last = None, 0.0
            stats.seen.clear()
        body = json.dumps(
            {"first": stats.first, "last": stats.last, "distinct": len(stats.seen)}
        ).encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json")]})  # fmt: skip
        await send({"type": "http.response.body", "body": body})
        return
    await _restate(scope, receive, send)
