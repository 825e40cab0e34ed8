"""The handler service both brokers invoke in the benchmark (official restate-sdk)."""

from __future__ import annotations

import restate
from restate import Context, ObjectContext, Service, VirtualObject, Workflow, WorkflowContext

noop_svc = Service("Noop")


@noop_svc.handler()
async def noop(ctx: Context) -> None:
    return None


counter = VirtualObject("BenchCounter")


@counter.handler()
async def add(ctx: ObjectContext, delta: int) -> int:
    n = (await ctx.get("count", type_hint=int)) or 0
    ctx.set("count", n + delta)
    return n + delta


steps = Workflow("ThreeSteps")


@steps.main()
async def run(ctx: WorkflowContext, x: int) -> int:
    a = await ctx.run_typed("one", lambda: x + 1)
    b = await ctx.run_typed("two", lambda: a * 2)
    return await ctx.run_typed("three", lambda: b + 3)


app = restate.app(services=[noop_svc, counter, steps])
