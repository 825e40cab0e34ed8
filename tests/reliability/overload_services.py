"""Handlers for the overload test (test 10), written with the Sluice SDK.

``Ledger.add`` counts each job under its own state key, so a job applied twice shows as 2
and a job never applied is missing; ``Ledger.slow_add`` does the same after a pause, for a
Kafka subscription that must throttle itself.
"""

from __future__ import annotations

import asyncio
from typing import Any

import sluice
from sluice import ObjectContext, VirtualObject

ledger = VirtualObject("Ledger")


async def _count(ctx: ObjectContext, job: str) -> int:
    n = (await ctx.get(job, type_hint=int) or 0) + 1
    ctx.set(job, n)
    return n


@ledger.handler()
async def add(ctx: ObjectContext, job: str) -> int:
    return await _count(ctx, job)


@ledger.handler()
async def slow_add(ctx: ObjectContext, rec: dict[str, Any]) -> int:
    await asyncio.sleep(0.02)  # holds its invoker slot: in-flight work piles up
    return await _count(ctx, rec["job"])


app = sluice.app(ledger)
