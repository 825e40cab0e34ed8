"""Calls and one-way calls: the callee's id is derived from the caller's journal position (or
from the idempotency key / workflow id), so replaying the log recreates the same callee."""

from __future__ import annotations

from sluice import protocol as p
from sluice.broker.ids import InvocationId, partition_key_of

from .._context import Ctx, failure
from .._records import Invoke, Kind, Status
from ..lifecycle import egress, shuffle
from ..lifecycle.complete import answer_sink
from ..lifecycle.invoke import caller_sink


def target_id(
    kind: int, service: str, handler: str, key: str, idempotency_key: str | None, seed: bytes
) -> InvocationId:
    """The callee's id; ingress and handlers derive workflow and idempotent ids alike."""
    pk = partition_key_of(key) if kind != Kind.SERVICE else None
    if kind == Kind.WORKFLOW:
        assert pk is not None
        return InvocationId.derive(pk, "wf", service, key)
    if idempotency_key is not None:
        pk = pk if pk is not None else partition_key_of(f"{service}/{handler}/{idempotency_key}")
        return InvocationId.derive(pk, "idem", service, key, handler, idempotency_key)
    if pk is None:
        pk = partition_key_of(seed)
    return InvocationId.derive(pk, "call", seed)


def _resolve(ctx: Ctx, service: str, handler: str) -> tuple[int, p.Failure | None]:
    svc = ctx.registry.services.get(service)
    if svc is None:
        return 0, failure(404, f"service '{service}' not found")
    h = svc.handlers.get(handler)
    if h is None:
        return 0, failure(404, f"handler '{service}/{handler}' not found")
    return h.kind(svc.ty), None


def call(ctx: Ctx, st: Status, cmd: p.CallCommand) -> None:
    _dispatch(ctx, st, cmd)


def one_way(ctx: Ctx, st: Status, cmd: p.OneWayCallCommand) -> None:
    if cmd.service_name == egress.KAFKA_SERVICE and cmd.handler_name == egress.KAFKA_SEND:
        egress.kafka_send(ctx, st, cmd)  # a built-in: the record joins the outbox
        return
    _dispatch(ctx, st, cmd)


def _dispatch(ctx: Ctx, st: Status, cmd: p.CallCommand | p.OneWayCallCommand) -> None:
    kind, fail = _resolve(ctx, cmd.service_name, cmd.handler_name)
    seed = st.id + st.journal_len.to_bytes(4, "big")
    callee = target_id(kind, cmd.service_name, cmd.handler_name, cmd.key, cmd.idempotency_key, seed)
    ctx.notify(
        st.id,
        p.CallInvocationIdCompletionNotification(
            completion_id=cmd.invocation_id_notification_idx, invocation_id=str(callee)
        ),
    )
    # A call's result goes back into the caller's journal; a one-way call's goes nowhere.
    sink = (
        caller_sink(st.id, cmd.result_completion_id, 0x800D)
        if isinstance(cmd, p.CallCommand)
        else None
    )
    if fail is not None:
        if sink is not None:
            answer_sink(ctx, sink, callee.raw, None, fail)
        return
    retention = 0
    if kind == Kind.WORKFLOW:
        retention = ctx.config.workflow_retention_ms
    elif cmd.idempotency_key is not None:
        retention = ctx.config.idempotency_retention_ms
    if isinstance(cmd, p.CallCommand):
        st.children.append(callee.raw)
        ctx.put_status(st)
    shuffle.route(
        ctx,
        callee.raw,
        Invoke(
            id=callee.raw,
            service=cmd.service_name,
            handler=cmd.handler_name,
            key=cmd.key,
            kind=kind,
            input=cmd.parameter,
            headers=cmd.headers,
            idempotency_key=cmd.idempotency_key,
            sink=sink,
            execute_at=cmd.invoke_time if isinstance(cmd, p.OneWayCallCommand) else 0,
            retention_ms=retention,
            caller=st.id,
        ),
    )
