"""Operator actions: cancel (signal 1, the handler may compensate), kill, purge, resume."""

from __future__ import annotations

from collections.abc import Iterator

from sluice import protocol as p

from .._context import Ctx, failure
from .._records import Manage, Phase, Status, Terminate
from .attempt import start_attempt
from .complete import complete, purge


def manage(ctx: Ctx, cmd: Manage) -> None:
    st = ctx.status(cmd.id)
    if cmd.action == Terminate.RESTART:
        if st is not None and st.phase == Phase.INVOKED:
            start_attempt(ctx, st)
        return
    if st is None:
        ctx.reply(cmd.waiter, "error", code=404, message="invocation not found")
        return
    if cmd.action == Terminate.PURGE:
        if st.phase != Phase.COMPLETED:
            ctx.reply(cmd.waiter, "error", code=409, message="invocation is not completed")
            return
        purge(ctx, st)
    elif st.phase == Phase.COMPLETED:
        ctx.reply(cmd.waiter, "ok", id=st.id, message="already completed")
        return
    elif cmd.action == Terminate.CANCEL:
        cancel(ctx, st)
    elif cmd.action == Terminate.KILL:
        kill(ctx, st)
    elif cmd.action == Terminate.RESUME and st.phase in (Phase.PAUSED, Phase.BACKING_OFF):
        st.retry_count = 0
        start_attempt(ctx, st)
    ctx.reply(cmd.waiter, "ok", id=cmd.id)


def _children(ctx: Ctx, st: Status, action: int) -> Iterator[Status]:
    """The children of ``st`` this partition owns and that still run; those of other
    partitions get ``action`` through their own logs (lifecycle/shuffle.py)."""
    from .shuffle import route

    for child in st.children:
        if ctx.owner(child) != ctx.partition:
            route(ctx, child, Manage(id=child, action=action))
            continue
        c = ctx.status(child)
        if c is not None and c.phase != Phase.COMPLETED:
            yield c


def cancel(ctx: Ctx, st: Status) -> None:
    for c in _children(ctx, st, Terminate.CANCEL):
        cancel(ctx, c)
    if st.phase in (Phase.SCHEDULED, Phase.INBOXED):
        complete(ctx, st, None, failure(409, "canceled"))
        return
    if st.phase in (Phase.PAUSED, Phase.BACKING_OFF):
        # Deliver the signal and give the handler one attempt to run its compensations.
        ctx.notify(st.id, p.SignalNotification(signal_idx=p.CANCEL_SIGNAL, void=True))
        start_attempt(ctx, st)
        return
    ctx.notify(st.id, p.SignalNotification(signal_idx=p.CANCEL_SIGNAL, void=True))


def kill(ctx: Ctx, st: Status) -> None:
    for c in _children(ctx, st, Terminate.KILL):
        kill(ctx, c)
    complete(ctx, st, None, failure(409, "killed"))
