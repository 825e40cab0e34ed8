"""The Kafka counter, written with the official restate-sdk (served by hypercorn in tests).

``add`` keeps, per key: the number of records, the sum of their ``v`` fields, the last Kafka
offset applied, and how often an offset arrived that was not above the last one (a
duplicate or a reordering). ``sluice_counter.py`` is the same object with the Sluice SDK.
"""

from __future__ import annotations

import asyncio
from typing import Any

from restate import ObjectContext, ObjectSharedContext, Service, TerminalError, VirtualObject
from restate import app as restate_app

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


@counter.handler()
async def slow(ctx: ObjectContext, rec: dict[str, Any]) -> None:
    await asyncio.sleep(0.05)  # not durable: only to keep invocations open for a while
    count = await ctx.get("count", type_hint=int) or 0
    ctx.set("count", count + 1)


@counter.handler(kind="shared")
async def get(ctx: ObjectSharedContext) -> dict[str, Any]:
    return {
        "count": await ctx.get("count", type_hint=int) or 0,
        "sum": await ctx.get("sum", type_hint=int) or 0,
        "out_of_order": await ctx.get("out_of_order", type_hint=int) or 0,
    }


echo = Service("KafkaEcho")


@echo.handler()
async def headers(ctx: Any, rec: Any) -> dict[str, str]:
    return dict(ctx.request().headers)


app = restate_app([counter, echo])
