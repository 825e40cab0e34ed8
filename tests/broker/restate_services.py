"""Handlers written with the official restate-sdk (1.3.0), served by hypercorn in tests."""

from __future__ import annotations

import os
from datetime import timedelta

import restate
from pydantic import BaseModel
from restate import (
    Context,
    ObjectContext,
    ObjectSharedContext,
    Service,
    TerminalError,
    VirtualObject,
    Workflow,
    WorkflowContext,
    WorkflowSharedContext,
)


class Person(BaseModel):
    name: str
    age: int


greeter = Service("Greeter")


@greeter.handler()
async def adult(ctx: Context, person: Person) -> bool:
    return person.age >= 18


@greeter.handler()
async def greet(ctx: Context, name: str) -> str:
    return f"Hello {name}!"


@greeter.handler()
async def noop(ctx: Context) -> None:
    return None


@greeter.handler()
async def fail(ctx: Context, msg: str) -> str:
    raise TerminalError(msg, status_code=418)


@greeter.handler()
async def sleepy(ctx: Context, ms: int) -> str:
    await ctx.sleep(timedelta(milliseconds=ms))
    return "rested"


@greeter.handler()
async def chain(ctx: Context, name: str) -> str:
    a = await ctx.service_call(greet, arg=name)
    n = await ctx.object_call(add, key=name, arg=1)
    ctx.object_send(add, key=name, arg=10, send_delay=timedelta(milliseconds=200))
    return f"{a} #{n}"


_flaky: dict[str, int] = {}


@greeter.handler()
async def flaky(ctx: Context, key: str) -> str:
    # Fails the first two attempts; the journaled run result must survive the retries.
    def side_effect() -> str:
        marker = os.environ.get("SLUICE_TEST_MARKERS")
        if marker:
            with open(marker, "a") as f:
                f.write(key + "\n")
        return "done"

    value = await ctx.run_typed("effect", side_effect)
    _flaky[key] = _flaky.get(key, 0) + 1
    if _flaky[key] < 3:
        raise RuntimeError("transient failure")
    return value


@greeter.handler()
async def wait_awakeable(ctx: Context) -> str:
    awk_id, fut = ctx.awakeable(type_hint=str)
    ctx.object_send(remember, key="awk", arg=awk_id)
    return await fut


@greeter.handler()
async def wait_long(ctx: Context) -> str:
    await ctx.sleep(timedelta(seconds=60))
    return "woke"


@greeter.handler()
async def resolver(ctx: Context, awk_id: str) -> None:
    ctx.resolve_awakeable(awk_id, "from-handler")


counter = VirtualObject("Counter")


@counter.handler()
async def add(ctx: ObjectContext, delta: int) -> int:
    n = (await ctx.get("count", type_hint=int)) or 0
    ctx.set("count", n + delta)
    return n + delta


@counter.handler(kind="shared")
async def get(ctx: ObjectSharedContext) -> int:
    return (await ctx.get("count", type_hint=int)) or 0


@counter.handler()
async def remember(ctx: ObjectContext, value: str) -> None:
    ctx.set("value", value)


@counter.handler(kind="shared")
async def recall(ctx: ObjectSharedContext) -> str | None:
    return await ctx.get("value", type_hint=str)


@counter.handler()
async def reset(ctx: ObjectContext) -> None:
    ctx.clear_all()


@counter.handler()
async def slow_add(ctx: ObjectContext, delta: int) -> int:
    await ctx.sleep(timedelta(milliseconds=100))
    n = (await ctx.get("count", type_hint=int)) or 0
    ctx.set("count", n + delta)
    return n + delta


@counter.handler()
async def hold(ctx: ObjectContext) -> None:
    """Holds its key (an exclusive handler) for an hour: until killed, in the tests."""
    await ctx.sleep(timedelta(hours=1))


signup = Workflow("SignUp")


@signup.main()
async def run(ctx: WorkflowContext, email: str) -> str:
    ctx.set("stage", "waiting")
    secret = await ctx.promise("link", type_hint=str).value()
    ctx.set("stage", "done")
    return f"{email}:{secret}"


@signup.handler()
async def click(ctx: WorkflowSharedContext, secret: str) -> None:
    await ctx.promise("link", type_hint=str).resolve(secret)


@signup.handler()
async def stage(ctx: WorkflowSharedContext) -> str | None:
    return await ctx.get("stage", type_hint=str)


worker = Service("Worker")


@worker.handler()
async def process(ctx: Context, item: str) -> str:
    """A journaled side effect, a durable sleep and a call: what the crash test checks."""

    def effect() -> str:
        token = os.urandom(6).hex()
        marker = os.environ.get("SLUICE_TEST_MARKERS")
        if marker:
            with open(marker, "a") as f:
                f.write(f"{item} {token}\n")
        return token

    token = await ctx.run_typed("effect", effect)
    await ctx.sleep(timedelta(milliseconds=50 + (hash(item) % 200)))
    await ctx.object_call(add, key="crash-total", arg=1)
    return token


app = restate.app(services=[greeter, counter, signup, worker])
