"""The Kafka counter, written with the official restate-sdk (served by hypercorn in tests).

``add`` keeps, per key: the number of records, the sum of their ``v`` fields, the last Kafka
offset applied, and how often an offset arrived that was not above the last one (a
duplicate or a reordering). ``sluice_counter.py`` is the same object with the Sluice SDK.
"""

from __future__ import annotations

import asyncio
from typing import Any

from restate import (
    Context,
    ObjectContext,
    ObjectSharedContext,
    Service,
    TerminalError,
    VirtualObject,
)
from restate import app as restate_app
from restate.serde import BytesSerde

counter = VirtualObject("KafkaCounter")


@counter.handler()
async def add(ctx: ObjectContext, rec: dict[str, Any]) -> None:
    if rec.get("fail"):
        raise TerminalError(f"refused record {rec.get('v')}", status_code=422)
    count = await ctx.get("count", type_hint=int) or 0
    total = await ctx.get("sum", type_hint=int) or 0
    ctx.set("count", count + 1)
    ctx.set("sum", total + int(rec.get("v", 0)))
    if "kafka.offset" not in ctx.request().headers:
        return  # sent by KafkaEcho/forward, not from a topic
    offset = int(ctx.request().headers["kafka.offset"])
    last = await ctx.get("last", type_hint=int)
    if last is not None and offset <= last:
        bad = await ctx.get("out_of_order", type_hint=int) or 0
        ctx.set("out_of_order", bad + 1)
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


@counter.handler()
async def remember(ctx: ObjectContext, rec: Any) -> None:
    """Keep the input and the headers the broker forwarded."""
    ctx.set("input", rec)
    ctx.set("headers", dict(ctx.request().headers))


echo = Service("KafkaEcho")


@echo.handler()
async def forward(ctx: Context, rec: dict[str, Any]) -> None:
    """A plain service handler (records run concurrently): counts them in the object."""
    ctx.object_send(add, key=str(rec["to"]), arg={"v": rec["v"]})


@echo.handler(accept="application/octet-stream", input_serde=BytesSerde())
async def raw(ctx: Context, data: bytes) -> None:
    ctx.object_send(remember, key="raw", arg=data.hex())


app = restate_app([counter, echo])
