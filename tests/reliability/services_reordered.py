"""``Journey.trip`` from ``services`` with its two ``run`` steps swapped: a code change that
breaks replay of journals recorded with the original."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import sluice
from sluice import ObjectContext, VirtualObject

from .services import echo, length

journey = VirtualObject("Journey")


@journey.handler()
async def trip(ctx: ObjectContext, name: str) -> dict[str, Any]:
    visits = (await ctx.get("visits", type_hint=int)) or 0
    went = await ctx.run("go", lambda: 0)  # was after the call
    packed = await ctx.run("pack", lambda: f"{name}-packed")
    await ctx.sleep(timedelta(milliseconds=5))
    n = await ctx.service_call(length, arg=packed)
    ctx.set("visits", visits + 1)
    return {"packed": packed, "n": n, "went": went, "visits": visits + 1}


app = sluice.app(echo, journey)
