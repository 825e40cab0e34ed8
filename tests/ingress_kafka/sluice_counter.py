"""The Kafka counter of ``restate_counter.py``, written with the Sluice SDK."""

from __future__ import annotations

from typing import Any

import sluice
from sluice import ObjectContext, ObjectSharedContext, TerminalError, VirtualObject

counter = VirtualObject("KafkaCounter")


@counter.handler()
async def add(ctx: ObjectContext, rec: dict[str, Any]) -> None:
    if rec.get("fail"):
        raise TerminalError(f"refused record {rec.get('v')}", status_code=422)
    offset = int(ctx.request().headers["kafka.offset"])
    count = await ctx.get("count", type_hint=int) or 0
    total = await ctx.get("sum", type_hint=int) or 0
    last = await ctx.get("last", type_hint=int)
    bad = await ctx.get("out_of_order", type_hint=int) or 0
    if last is not None and offset <= last:
        bad += 1
        ctx.set("out_of_order", bad)
    ctx.set("count", count + 1)
    ctx.set("sum", total + int(rec.get("v", 0)))
    ctx.set("last", offset)


@counter.handler(kind="shared")
async def get(ctx: ObjectSharedContext) -> dict[str, Any]:
    return {
        "count": await ctx.get("count", type_hint=int) or 0,
        "sum": await ctx.get("sum", type_hint=int) or 0,
        "out_of_order": await ctx.get("out_of_order", type_hint=int) or 0,
    }


app = sluice.app(counter)
