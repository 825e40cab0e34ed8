"""The scenario services written with the Sluice SDK (the API of docs/sdk-api.md).

`restate_services.py` is the same set of services, with the same names and semantics, written
with the official restate-sdk: the scenario tests run unchanged against either.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import sluice
from sluice import (
    Context,
    ObjectContext,
    ObjectSharedContext,
    Service,
    TerminalError,
    VirtualObject,
    Workflow,
    WorkflowContext,
    WorkflowSharedContext,
    gather,
)

from .effects import attempt as count_attempt
from .effects import record, wait_for_release

# --- a counter object ------------------------------------------------------------------------

counter = VirtualObject("Counter")


@counter.handler()
async def add(ctx: ObjectContext, delta: int) -> int:
    n = (await ctx.get("count", type_hint=int)) or 0
    ctx.set("count", n + delta)
    return n + delta


@counter.handler()
async def add_slowly(ctx: ObjectContext, delta: int) -> int:
    """Read, sleep, write: only correct if exclusive handlers of one key never overlap."""
    n = (await ctx.get("count", type_hint=int)) or 0
    await ctx.sleep(timedelta(milliseconds=20))
    ctx.set("count", n + delta)
    return n + delta


@counter.handler(kind="shared")
async def get(ctx: ObjectSharedContext) -> int:
    return (await ctx.get("count", type_hint=int)) or 0


@counter.handler(kind="shared")
async def keys(ctx: ObjectSharedContext) -> list[str]:
    return sorted(await ctx.state_keys())


@counter.handler()
async def reset(ctx: ObjectContext) -> None:
    ctx.clear_all()


@counter.handler()
async def block(ctx: ObjectContext, ms: int) -> int:
    """Hold the key's lock for `ms` in a durable sleep, then add 1000 (a kill must prevent it)."""
    ctx.set("blocked", True)
    await ctx.sleep(timedelta(milliseconds=ms))
    n = (await ctx.get("count", type_hint=int)) or 0
    ctx.set("count", n + 1000)
    return n + 1000


# --- a three-step workflow of `run` steps ------------------------------------------------------

steps = Workflow("Steps")


@steps.main()
async def run(ctx: WorkflowContext, start: int) -> list[int]:
    key = ctx.key()
    record("body", key)  # not journaled: counts executions of the handler body (replays)

    def step(name: str, value: int) -> int:
        record("step", key, step=name)
        return value

    one = await ctx.run("one", step, "one", start + 1, type_hint=int)
    two = await ctx.run("two", step, "two", one * 2, type_hint=int)
    three = await ctx.run("three", step, "three", two + 3, type_hint=int)
    return [one, two, three]


# --- the sign-up workflow: a durable promise resolved by a shared handler -----------------------

signup = Workflow("SignUp")


# Every workflow's main handler is called `run`, and the name comes from the function.
@signup.main()
async def run(ctx: WorkflowContext, email: str) -> str:  # noqa: F811
    key = ctx.key()
    secret = str(ctx.uuid())
    ctx.set("stage", "sending email")

    def send_email() -> None:
        record("email", key, to=email, secret=secret)

    await ctx.run("send email", send_email)
    ctx.set("stage", "waiting for click")
    clicked = await ctx.promise("link", type_hint=str).value()
    if clicked != secret:
        ctx.set("stage", "rejected")
        raise TerminalError("wrong secret", status_code=403)
    ctx.set("stage", "verified")
    return f"verified {email}"


@signup.handler()
async def click(ctx: WorkflowSharedContext, secret: str) -> None:
    await ctx.promise("link", type_hint=str).resolve(secret)


@signup.handler()
async def stage(ctx: WorkflowSharedContext) -> str | None:
    return await ctx.get("stage", type_hint=str)


@signup.handler()
async def link(ctx: WorkflowSharedContext) -> str | None:
    return await ctx.promise("link", type_hint=str).peek()


# --- sleeps ------------------------------------------------------------------------------------

sleeper = Service("Sleeper")


@sleeper.handler()
async def sleep(ctx: Context, ms: int) -> int:
    await ctx.sleep(timedelta(milliseconds=ms))
    return ms


@sleeper.handler()
async def sleep_many(ctx: Context, req: dict[str, int]) -> int:
    """`count` durable sleeps of `ms` each, awaited together: takes about `ms`, not count x ms."""
    timers = [ctx.sleep(timedelta(milliseconds=req["ms"])) for _ in range(req["count"])]
    await gather(*timers)
    return req["count"]


# --- call and delayed-send chains across three services -----------------------------------------

chain_a = Service("ChainA")
chain_b = Service("ChainB")
chain_c = VirtualObject("ChainC")


@chain_c.handler(name="append")
async def chain_append(ctx: ObjectContext, value: str) -> list[str]:
    values = (await ctx.get("values", type_hint=list[str])) or []
    values.append(value + "|C")
    ctx.set("values", values)
    return values


@chain_c.handler(name="get", kind="shared")
async def chain_get(ctx: ObjectSharedContext) -> list[str]:
    return (await ctx.get("values", type_hint=list[str])) or []


@chain_b.handler()
async def relay(ctx: Context, req: dict[str, Any]) -> list[str]:
    result: list[str] = await ctx.object_call(chain_append, req["key"], req["value"] + "|B")
    return result


@chain_b.handler()
async def relay_send(ctx: Context, req: dict[str, Any]) -> None:
    ctx.object_send(chain_append, req["key"], req["value"] + "|B")


@chain_a.handler(name="call")
async def chain_call(ctx: Context, req: dict[str, Any]) -> list[str]:
    result: list[str] = await ctx.service_call(
        relay, {"key": req["key"], "value": req["value"] + "|A"}
    )
    return result


@chain_a.handler()
async def send_later(ctx: Context, req: dict[str, Any]) -> str:
    handle = ctx.service_send(
        relay_send,
        {"key": req["key"], "value": req["value"] + "|A"},
        delay=timedelta(milliseconds=req["delay_ms"]),
    )
    return await handle.invocation_id()


# --- an awakeable resolved from outside ------------------------------------------------------

approval = VirtualObject("Approval")


@approval.handler()
async def request(ctx: ObjectContext, what: str) -> str:
    awakeable_id, decision = ctx.awakeable(type_hint=str)
    ctx.set("awakeable", awakeable_id)
    answer = await decision
    ctx.clear("awakeable")
    return f"{what}: {answer}"


@approval.handler(kind="shared")
async def pending(ctx: ObjectSharedContext) -> str | None:
    return await ctx.get("awakeable", type_hint=str)


# --- idempotency: one execution per key --------------------------------------------------------

payments = Service("Payments")


@payments.handler()
async def charge(ctx: Context, req: dict[str, Any]) -> str:
    def do_charge() -> str:
        record("charge", req["key"], amount=req["amount"])
        return f"charged {req['amount']}"

    return await ctx.run("charge", do_charge, type_hint=str)


@payments.handler()
async def charge_twice(ctx: Context, req: dict[str, Any]) -> list[str]:
    """Two calls with one idempotency key, from inside a handler: one charge, one result."""
    first: str = await ctx.service_call(charge, req, idempotency_key=f"inner-{req['key']}")
    second: str = await ctx.service_call(charge, req, idempotency_key=f"inner-{req['key']}")
    return [first, second]


# --- terminal errors ---------------------------------------------------------------------------

errors = Service("Errors")


@errors.handler()
async def fail(ctx: Context, req: dict[str, Any]) -> str:
    raise TerminalError(req["message"], status_code=req["code"])


@errors.handler()
async def call_fail(ctx: Context, req: dict[str, Any]) -> str:
    result: str = await ctx.service_call(fail, req)
    return result


@errors.handler()
async def catch_fail(ctx: Context, req: dict[str, Any]) -> dict[str, Any]:
    try:
        await ctx.service_call(fail, req)
    except TerminalError as exc:
        return {"message": exc.message, "code": exc.status_code}
    return {"message": None, "code": None}


@errors.handler()
async def fail_in_run(ctx: Context, req: dict[str, Any]) -> str:
    key = req["key"]

    def step() -> str:
        record("fail_in_run", key)
        raise TerminalError(req["message"], status_code=req["code"])

    return await ctx.run("failing step", step, type_hint=str)


# --- a saga: compensations run on failure and on cancellation ----------------------------------

trips = Service("Trips")


@trips.handler()
async def book(ctx: Context, req: dict[str, Any]) -> list[str]:
    """Book flight, hotel, car; `fail_at` makes one booking fail terminally; `wait_ms` holds a
    durable sleep after the hotel (a payment window), where a cancellation lands."""
    trip = req["trip"]
    booked: list[str] = []

    def reserve(item: str) -> str:
        if item == req.get("fail_at"):
            record("failed", trip, item=item)
            raise TerminalError(f"{item} unavailable", status_code=409)
        record("booked", trip, item=item)
        return item

    def compensate(item: str) -> None:
        record("cancelled", trip, item=item)

    try:
        for item in ("flight", "hotel", "car"):
            booked.append(await ctx.run(f"book {item}", reserve, item, type_hint=str))
            if item == "hotel" and req.get("wait_ms"):
                # Not journaled (written again on each replay): the hotel's result is durable
                # by now, since the await above returned, and the sleep comes next.
                record("paying", trip)
                await ctx.sleep(timedelta(milliseconds=req["wait_ms"]))
    except TerminalError:  # a failed booking, or sluice.CancelledError from the pending await
        for item in reversed(booked):
            await ctx.run(f"cancel {item}", compensate, item)
        raise
    finally:
        # Not journaled: this attempt's coroutine is over (returned, failed, suspended or
        # stopped by a kill), and no step of it runs after this line.
        record("left", trip)
    return booked


# --- a run interrupted by a SIGKILL of this process --------------------------------------------

crashy = Service("Crashy")


@crashy.handler(name="run")
async def crashy_run(ctx: Context, key: str) -> list[str]:
    def quick(name: str) -> str:
        record("step", key, step=name)
        return name

    async def slow() -> str:
        record("step", key, step="three-start")
        await wait_for_release(key)
        record("step", key, step="three-end")
        return "three"

    one = await ctx.run("one", quick, "one", type_hint=str)
    two = await ctx.run("two", quick, "two", type_hint=str)
    three = await ctx.run("three", slow, type_hint=str)
    return [one, two, three]


# --- non-determinism: the command order depends on the attempt ---------------------------------

nondeterministic = Service("Nondeterministic")


@nondeterministic.handler()
async def diverge(ctx: Context, key: str) -> str:
    if count_attempt(key) == 1:
        await ctx.run("step", lambda: "done")
        # A retryable failure: the next attempt replays the journal, which holds the run.
        raise RuntimeError("first attempt fails on purpose")
    await ctx.sleep(timedelta(milliseconds=1))
    return "unreachable"


SERVICES = [
    counter,
    steps,
    signup,
    sleeper,
    chain_a,
    chain_b,
    chain_c,
    approval,
    payments,
    errors,
    trips,
    crashy,
    nondeterministic,
]

# Always-replay mode comes from the environment (SLUICE_ALWAYS_REPLAY=1), set by the harness.
app = sluice.app(*SERVICES)
