"""Completion: answer every sink, release the key, keep the result as long as retention says."""

from __future__ import annotations

import struct

from sluice import protocol as p

from .. import actions as a
from .._context import Ctx, key_prefix
from .._records import Expire, FillOutbox, Kind, Phase, Sink, SinkKind, Status, Timer
from . import shuffle

_U64 = struct.Struct(">Q")


def answer_sink(
    ctx: Ctx, sink: Sink, id: bytes, value: bytes | None, fail: p.Failure | None
) -> None:
    if sink.kind == SinkKind.INGRESS:
        if fail is not None:
            ctx.reply(sink.waiter, "result", id=id, code=fail.code, message=fail.message)
        else:
            ctx.reply(sink.waiter, "result", id=id, value=value if value is not None else b"")
    elif sink.kind == SinkKind.CALLER:
        cls = p.MESSAGE_TYPES[sink.notification_type]
        assert issubclass(cls, p.Notification)  # a caller sink names a completion's type
        n = cls(completion_id=sink.completion_id)
        if fail is not None:
            n.failure = fail
        else:
            n.value = value if value is not None else b""
        shuffle.notify(ctx, sink.invocation, n)  # the caller may be of another partition
    elif sink.kind == SinkKind.KAFKA:
        from .kafka import answer

        answer(ctx, sink, id, fail)
        if sink.outbox:  # (reserved by the partition that ingested the record)
            fill = FillOutbox(key=sink.outbox, value=value, failure=fail)
            shuffle.route_to(ctx, sink.outbox_partition, fill)


def answer_or_wait(ctx: Ctx, st: Status, sink: Sink) -> None:
    """Answer ``sink`` with ``st``'s result if it has one, else keep it until it does."""
    if st.phase == Phase.COMPLETED:
        answer_sink(ctx, sink, st.id, st.result, st.failure)
    else:
        st.sinks.append(sink)
        ctx.put_status(st)


def complete(ctx: Ctx, st: Status, value: bytes | None, fail: p.Failure | None) -> None:
    from .invoke import release_key

    if st.phase == Phase.INVOKED:
        ctx.actions.append(a.AbortAttempt(st.id, st.epoch))
    for sink in st.sinks:
        answer_sink(ctx, sink, st.id, value, fail)
    st.sinks = []
    release_key(ctx, st)
    ctx.delete_journal(st)
    st.phase = Phase.COMPLETED
    st.result = value if fail is None else None
    st.failure = fail
    st.completed_at = ctx.now
    st.waiting_completions, st.waiting_signals, st.waiting_names = [], [], []
    retention = st.retention_ms or ctx.config.completion_retention_ms
    if retention > 0:
        ctx.put_status(st)
        ctx.tx.put("expiry", _U64.pack(ctx.now + retention) + st.id, b"")
    else:
        ctx.delete_status(st.id)


def expire(ctx: Ctx, cmd: Expire) -> None:
    """Forget every completed invocation whose retention ended by ``cmd.upto``."""
    for k, _ in ctx.tx.scan("expiry", b""):
        if _U64.unpack_from(k)[0] > cmd.upto:
            break
        ctx.tx.delete("expiry", k)
        st = ctx.status(k[8:])
        if st is not None and st.phase == Phase.COMPLETED:
            purge(ctx, st)


def cleanup_due(ctx: Ctx, timer: Timer) -> None:
    st = ctx.status(timer.id)
    if st is None or st.phase != Phase.COMPLETED:
        return
    purge(ctx, st)


def purge(ctx: Ctx, st: Status) -> None:
    if st.kind == Kind.WORKFLOW:
        # A workflow's state and promises live as long as its run's result.
        prefix = key_prefix(st.service, st.key)
        for k, _ in ctx.tx.scan("state", prefix):
            ctx.tx.delete("state", k)
        for k, _ in ctx.tx.scan("promises", prefix):
            ctx.tx.delete("promises", k)
    ctx.delete_status(st.id)
