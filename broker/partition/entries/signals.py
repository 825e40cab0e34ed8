"""Signals between invocations: SendSignal (incl. cancel) and CompleteAwakeable."""

from __future__ import annotations

from sluice import protocol as p
from sluice.broker.ids import InvocationId, parse_awakeable_id

from .._context import Ctx
from .._records import Manage, Signal, Status, Terminate
from ..lifecycle import shuffle


def send_signal(ctx: Ctx, st: Status, cmd: p.SendSignalCommand) -> None:
    try:
        target = InvocationId.parse(cmd.target_invocation_id).raw
    except ValueError:
        return
    if cmd.idx == p.CANCEL_SIGNAL:
        shuffle.route(ctx, target, Manage(id=target, action=Terminate.CANCEL))
        return
    n = p.SignalNotification(signal_idx=cmd.idx, signal_name=cmd.signal_name)
    if cmd.failure is not None:
        n.failure = cmd.failure
    elif cmd.value is not None:
        n.value = cmd.value
    else:
        n.void = True
    shuffle.notify(ctx, target, n)


def complete_awakeable(ctx: Ctx, st: Status, cmd: p.CompleteAwakeableCommand) -> None:
    try:
        target, idx = parse_awakeable_id(cmd.awakeable_id)
    except ValueError:
        return
    n = p.SignalNotification(signal_idx=idx)
    if cmd.failure is not None:
        n.failure = cmd.failure
    else:
        n.value = cmd.value or b""
    shuffle.notify(ctx, target.raw, n)


def external(ctx: Ctx, cmd: Signal) -> None:
    """An awakeable resolved or rejected through the ingress.

    Accepted even when the invocation is gone or finished, as restate-server does: a client
    that resends a resolve whose answer it lost (the broker died) must not get an error for
    the resolve that took effect.
    """
    ctx.reply(cmd.waiter, "ok")
    n = p.SignalNotification(signal_idx=cmd.idx, signal_name=cmd.name)
    if cmd.failure is not None:
        n.failure = cmd.failure
    else:
        n.value = cmd.value or b""
    ctx.notify(cmd.target, n)
