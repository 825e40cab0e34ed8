"""Effects on invocations that another partition owns (DESIGN.md, "Physical partitions").

Each partition applies its own log into its own tables, so an effect on an invocation of
another partition cannot be a write: it becomes a command for that partition, kept in this
partition's ``shuffle`` table in the same write batch as the effect's cause, and appended to
the target's log by this partition's leader:

    P0 applies X's CallCommand ──► shuffle row (P1, seq 7): Invoke(Y)     (one write batch)
    P0's leader ──append──► P1's log: Routed(source 0, seq 7, Invoke(Y)) ──► P1 applies it
    P0's leader ──propose──► ShuffleDelivered(P1, upto 7) ──► P0 deletes the rows

A row is sent until its delivery is recorded, so it may reach the target twice (a leader
that died after the append, before the proposal); the target applies a source's rows only
with a sequence above the last it applied from that source, so once. An effect on an
invocation this partition owns is applied at once, as if it had come back through the log:
with one partition per processor everything is local and nothing changes.

The effects: a call or send (``Invoke`` of the callee, or of a Kafka record's invocation
from the partition that ingested it), a result or signal for an invocation (``Notify``), an
attach or output request to another invocation (``AttachCaller``), the cancellation or kill of
a child (``Manage``), and the result of a Kafka record's invocation for the outbox row that
its ingesting partition reserved (``FillOutbox``).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

from sluice import protocol as p
from sluice.broker.storage import Store

from .. import actions as a
from .._context import Ctx, failure
from .._records import (
    AttachCaller,
    FillOutbox,
    Invoke,
    Manage,
    Notify,
    Phase,
    Routed,
    ShuffleDelivered,
    decode_command,
    encode_command,
)

_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_SEQ = b"shuffle_seq"  # meta: the last sequence this partition gave a row
SEEN = b"shuffle_seen/"  # meta, + u32 source: the last sequence applied from that source

Routable = Invoke | Notify | AttachCaller | Manage | FillOutbox


def route(ctx: Ctx, target: bytes, cmd: Routable) -> None:
    """Apply ``cmd`` for the invocation ``target`` here if this partition owns it, else keep
    it for the partition that does."""
    route_to(ctx, ctx.owner(target), cmd)


def route_to(ctx: Ctx, owner: int, cmd: Routable) -> None:
    """Apply ``cmd`` here if ``owner`` is this partition, else keep it for that one."""
    if owner == ctx.partition:
        deliver(ctx, cmd)
        return
    raw = ctx.tx.get("meta", _SEQ)
    seq = (_U64.unpack(raw)[0] if raw else 0) + 1
    ctx.tx.put("meta", _SEQ, _U64.pack(seq))
    ctx.tx.put("shuffle", _U32.pack(owner) + _U64.pack(seq), encode_command(cmd))
    ctx.actions.append(a.ShuffleReady(owner))


def notify(ctx: Ctx, target: bytes, n: p.Notification) -> None:
    """``ctx.notify`` for an invocation of any partition."""
    if ctx.owner(target) == ctx.partition:
        ctx.notify(target, n)
    else:
        route(ctx, target, Notify(id=target, notification=p.encode(n)))


def deliver(ctx: Ctx, cmd: Routable) -> None:
    """Apply a routed command in the partition that owns its invocation."""
    if isinstance(cmd, Invoke):
        from .invoke import invoke

        invoke(ctx, cmd)
    elif isinstance(cmd, Notify):
        n = p.decode_all(cmd.notification)[0].message
        assert isinstance(n, p.Notification), "a routed notification is a notification"
        ctx.notify(cmd.id, n)
    elif isinstance(cmd, AttachCaller):
        _attach(ctx, cmd)
    elif isinstance(cmd, FillOutbox):
        from .egress import fill, release

        if cmd.release:
            release(ctx, cmd.key)
        else:
            fill(ctx, cmd.key, cmd.value, cmd.failure)
    else:
        from .manage import manage

        manage(ctx, cmd)


def _attach(ctx: Ctx, cmd: AttachCaller) -> None:
    from .complete import answer_or_wait, answer_sink

    sink = cmd.sink
    assert sink is not None, "an attach names its caller"
    st = ctx.status(cmd.id)
    if cmd.output_only:
        n = p.GetInvocationOutputCompletionNotification(completion_id=sink.completion_id)
        if st is None or st.phase != Phase.COMPLETED:
            n.void = True
        elif st.failure is not None:
            n.failure = st.failure
        else:
            n.value = st.result or b""
        notify(ctx, sink.invocation, n)
    elif st is None:
        answer_sink(ctx, sink, cmd.id, None, failure(404, "invocation not found"))
    else:
        answer_or_wait(ctx, st, sink)


def routed(ctx: Ctx, cmd: Routed) -> None:
    """A command from another partition's outbox: once per (source, seq)."""
    key = SEEN + _U32.pack(cmd.source)
    raw = ctx.tx.get("meta", key)
    if raw is not None and cmd.seq <= _U64.unpack(raw)[0]:
        return  # sent again by a leader that did not see its delivery recorded
    ctx.tx.put("meta", key, _U64.pack(cmd.seq))
    inner = decode_command(cmd.command)
    if isinstance(inner, Invoke | Notify | AttachCaller | Manage | FillOutbox):
        deliver(ctx, inner)


def delivered(ctx: Ctx, cmd: ShuffleDelivered) -> None:
    prefix = _U32.pack(cmd.target)
    for k, _ in ctx.tx.scan("shuffle", prefix):
        if _U64.unpack_from(k, 4)[0] > cmd.upto:
            break
        ctx.tx.delete("shuffle", k)


def outgoing(store: Store, target: int) -> Iterator[tuple[int, bytes]]:
    """The rows waiting for ``target``, oldest first: (seq, the command to append there
    wrapped as ``Routed`` by the sender)."""
    for k, v in store.scan("shuffle", _U32.pack(target)):
        yield _U64.unpack_from(k, 4)[0], v
