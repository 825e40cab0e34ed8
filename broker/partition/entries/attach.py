"""AttachInvocation and GetInvocationOutput commands from inside a handler."""

from __future__ import annotations

from sluice import protocol as p
from sluice.broker.ids import InvocationId, partition_key_of

from .._context import Ctx, failure
from .._records import AttachCaller, Status
from ..lifecycle import shuffle
from ..lifecycle.complete import answer_sink
from ..lifecycle.invoke import caller_sink


def _target(cmd: p.AttachInvocationCommand) -> bytes | None:
    try:
        if cmd.invocation_id is not None:
            return InvocationId.parse(cmd.invocation_id).raw
    except ValueError:
        return None
    if cmd.workflow_target is not None:
        wt = cmd.workflow_target
        return InvocationId.derive(
            partition_key_of(wt.workflow_key), "wf", wt.workflow_name, wt.workflow_key
        ).raw
    if cmd.idempotent_request_target is not None:
        t = cmd.idempotent_request_target
        key = t.service_key or ""
        pk = (
            partition_key_of(key)
            if t.service_key is not None
            else partition_key_of(f"{t.service_name}/{t.handler_name}/{t.idempotency_key}")
        )
        return InvocationId.derive(
            pk, "idem", t.service_name, key, t.handler_name, t.idempotency_key
        ).raw
    return None


def attach(ctx: Ctx, st: Status, cmd: p.AttachInvocationCommand) -> None:
    sink = caller_sink(st.id, cmd.result_completion_id, 0x8012)
    target = _target(cmd)
    if target is None:
        answer_sink(ctx, sink, st.id, None, failure(404, "invocation not found"))
    else:  # (the target may be of another partition: lifecycle/shuffle.py)
        shuffle.route(ctx, target, AttachCaller(id=target, sink=sink))


def get_output(ctx: Ctx, st: Status, cmd: p.GetInvocationOutputCommand) -> None:
    target = _target(cmd)
    if target is None:
        n = p.GetInvocationOutputCompletionNotification(completion_id=cmd.result_completion_id)
        n.void = True
        ctx.notify(st.id, n)
        return
    sink = caller_sink(st.id, cmd.result_completion_id, 0x8013)
    shuffle.route(ctx, target, AttachCaller(id=target, sink=sink, output_only=True))
