"""New invocations: dedup by id (idempotency keys and workflow ids make ids deterministic),
delayed start, and the per-key FIFO inbox of exclusive handlers."""

from __future__ import annotations

import struct

from sluice import protocol as p

from .._context import Ctx, failure, key_prefix
from .._records import Invoke, Kind, Phase, Sink, SinkKind, Status, Timer, TimerKind
from .attempt import start_attempt
from .complete import answer_or_wait, answer_sink

_U64 = struct.Struct(">Q")


def invoke(ctx: Ctx, cmd: Invoke) -> None:
    existing = ctx.status(cmd.id)
    if existing is not None:
        _dedup(ctx, cmd, existing)
        return
    svc = ctx.registry.services.get(cmd.service)
    handler = svc.handlers.get(cmd.handler) if svc else None
    if svc is None or handler is None:
        # Only calls from handlers get here (the ingress checks first): fail the call.
        if cmd.sink is not None:
            what = (
                f"service '{cmd.service}'"
                if svc is None
                else f"handler '{cmd.service}/{cmd.handler}'"
            )
            answer_sink(ctx, cmd.sink, cmd.id, None, failure(404, f"{what} not found"))
        return
    st = Status(
        id=cmd.id,
        service=cmd.service,
        handler=cmd.handler,
        key=cmd.key,
        kind=cmd.kind,
        idempotency_key=cmd.idempotency_key,
        retention_ms=cmd.retention_ms,
        created_at=ctx.now,
        sinks=[cmd.sink] if cmd.sink is not None and not cmd.send else [],
    )
    ctx.append_journal(st, p.encode(p.InputCommand(headers=cmd.headers, value=cmd.input)))
    if cmd.send and cmd.sink is not None and cmd.sink.kind == SinkKind.INGRESS:
        ctx.reply(cmd.sink.waiter, "accepted", id=cmd.id)
    if cmd.execute_at > ctx.now:
        st.phase = Phase.SCHEDULED
        ctx.put_status(st)
        ctx.add_timer(cmd.execute_at, Timer(kind=TimerKind.START, id=st.id))
        return
    admit(ctx, st)


def _dedup(ctx: Ctx, cmd: Invoke, st: Status) -> None:
    """The same idempotency key or workflow id again: attach to the first invocation."""
    sink = cmd.sink
    if sink is None:
        return
    if cmd.send:
        if sink.kind == SinkKind.INGRESS:
            ctx.reply(sink.waiter, "previously", id=st.id)
        return
    if st.kind == Kind.WORKFLOW:
        # A workflow's run handler runs once per id: another call is refused, like restate.
        answer_sink(ctx, sink, st.id, None, failure(409, "the workflow method was already invoked"))
        return
    answer_or_wait(ctx, st, sink)


def start_scheduled(ctx: Ctx, timer: Timer) -> None:
    st = ctx.status(timer.id)
    if st is not None and st.phase == Phase.SCHEDULED:
        admit(ctx, st)


def admit(ctx: Ctx, st: Status) -> None:
    """Run now, or queue behind the current holder of the key."""
    if st.kind in (Kind.EXCLUSIVE, Kind.WORKFLOW):
        lock_key = key_prefix(st.service, st.key)
        if ctx.tx.get("locks", lock_key) is not None:
            seq = ctx.tx.get("meta", b"inbox_seq")
            n = _U64.unpack(seq)[0] + 1 if seq else 1
            ctx.tx.put("meta", b"inbox_seq", _U64.pack(n))
            ctx.tx.put("inbox", lock_key + _U64.pack(n), st.id)
            st.phase = Phase.INBOXED
            st.inbox_seq = n
            ctx.put_status(st)
            return
        ctx.tx.put("locks", lock_key, st.id)
    start_attempt(ctx, st)


def release_key(ctx: Ctx, st: Status) -> None:
    """Free the key and start the next inboxed invocation of it, if any."""
    if st.kind not in (Kind.EXCLUSIVE, Kind.WORKFLOW):
        return
    lock_key = key_prefix(st.service, st.key)
    if ctx.tx.get("locks", lock_key) != st.id:
        if st.phase == Phase.INBOXED:
            ctx.tx.delete("inbox", lock_key + _U64.pack(st.inbox_seq))
        return
    ctx.tx.delete("locks", lock_key)
    for k, next_id in ctx.tx.scan("inbox", lock_key):
        if len(k) != len(lock_key) + 8:
            continue
        ctx.tx.delete("inbox", k)
        nxt = ctx.status(next_id)
        if nxt is None or nxt.phase != Phase.INBOXED:
            continue
        ctx.tx.put("locks", lock_key, nxt.id)
        start_attempt(ctx, nxt)
        return


def caller_sink(caller: bytes, completion_id: int, notification_type: int) -> Sink:
    return Sink(
        kind=SinkKind.CALLER,
        invocation=caller,
        completion_id=completion_id,
        notification_type=notification_type,
    )
