"""Attach (wait for the result) and get-output (the result if there is one), from the ingress."""

from __future__ import annotations

from .._context import Ctx
from .._records import Attach, AttachMode, Phase, Sink, SinkKind


def attach(ctx: Ctx, cmd: Attach) -> None:
    st = ctx.status(cmd.id)
    if st is None:
        ctx.reply(cmd.waiter, "error", code=404, message="invocation not found")
        return
    if st.phase == Phase.COMPLETED:
        if st.failure is not None:
            ctx.reply(
                cmd.waiter, "result", id=st.id, code=st.failure.code, message=st.failure.message
            )
        else:
            ctx.reply(cmd.waiter, "result", id=st.id, value=st.result or b"")
        return
    if cmd.mode == AttachMode.OUTPUT:
        ctx.reply(
            cmd.waiter, "error", code=470, message="the invocation exists but has not completed yet"
        )
        return
    st.sinks.append(Sink(kind=SinkKind.INGRESS, waiter=cmd.waiter))
    ctx.put_status(st)
