"""Operator actions: cancel (signal 1, the handler may compensate), kill, purge, resume."""

from __future__ import annotations

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


def cancel(ctx: Ctx, st: Status) -> None:
    for child in st.children:
        c = ctx.status(child)
        if c is not None and c.phase != Phase.COMPLETED:
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
    for child in st.children:
        c = ctx.status(child)
        if c is not None and c.phase != Phase.COMPLETED:
            kill(ctx, c)
    complete(ctx, st, None, failure(409, "killed"))
