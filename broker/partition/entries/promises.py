"""Workflow promises: get (wait), peek (now), complete (once)."""

from __future__ import annotations

from sluice import protocol as p

from .._context import Ctx, failure, key_prefix
from .._records import Promise, Sink, SinkKind, Status
from ..lifecycle.complete import answer_sink


def _key(st: Status, name: str) -> bytes:
    return key_prefix(st.service, st.key) + name.encode()


def _load(ctx: Ctx, k: bytes) -> Promise:
    raw = ctx.tx.get("promises", k)
    return Promise.decode(raw) if raw is not None else Promise()


def get(ctx: Ctx, st: Status, cmd: p.GetPromiseCommand) -> None:
    k = _key(st, cmd.key)
    prom = _load(ctx, k)
    sink = Sink(
        kind=SinkKind.CALLER,
        invocation=st.id,
        completion_id=cmd.result_completion_id,
        notification_type=0x8009,
    )
    if prom.completed:
        answer_sink(ctx, sink, st.id, prom.value, prom.failure)
    else:
        prom.waiters.append(sink)
        ctx.tx.put("promises", k, prom.encode())


def peek(ctx: Ctx, st: Status, cmd: p.PeekPromiseCommand) -> None:
    prom = _load(ctx, _key(st, cmd.key))
    n = p.PeekPromiseCompletionNotification(completion_id=cmd.result_completion_id)
    if not prom.completed:
        n.void = True
    elif prom.failure is not None:
        n.failure = prom.failure
    else:
        n.value = prom.value or b""
    ctx.notify(st.id, n)


def complete(ctx: Ctx, st: Status, cmd: p.CompletePromiseCommand) -> None:
    k = _key(st, cmd.key)
    prom = _load(ctx, k)
    n = p.CompletePromiseCompletionNotification(completion_id=cmd.result_completion_id)
    if prom.completed:
        n.failure = failure(409, "promise already completed")
        ctx.notify(st.id, n)
        return
    waiters = prom.waiters
    if cmd.completion_failure is not None:
        done = Promise(completed=True, failure=cmd.completion_failure)
    else:
        done = Promise(completed=True, value=cmd.completion_value or b"")
    ctx.tx.put("promises", k, done.encode())
    n.void = True
    ctx.notify(st.id, n)
    for w in waiters:
        answer_sink(ctx, w, st.id, done.value, done.failure)
