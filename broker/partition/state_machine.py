"""The deterministic core: a log command in, table writes and actions out. No I/O, no clock.

Dispatch only; every command family lives in its own module under ``entries/`` (journal
commands) or ``lifecycle/`` (invocation lifecycle events).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sluice import protocol as p
from sluice.broker.schema import Deployment, Registry

from . import actions as a
from ._context import Config, Ctx
from ._outbox import EgressCommitted, EgressIdentity
from ._records import (
    AnnounceLeader,
    Attach,
    DeadLettered,
    Effects,
    Expire,
    Invoke,
    KafkaIngest,
    Manage,
    Phase,
    Proposal,
    Routed,
    SchemaUpdate,
    ShuffleDelivered,
    Signal,
    Status,
    SubscriptionUpdate,
    Timer,
    TimerFired,
    TimerKind,
    decode_command,
)
from .entries import attach, calls, promises, signals, sleep, state
from .lifecycle import attach as attach_lc
from .lifecycle import attempt, complete, egress, invoke, kafka, leadership, manage, shuffle

_Handler = Callable[[Ctx, Status, Any], None]


def _noop(ctx: Ctx, st: Status, cmd: Any) -> None:
    pass


def _output(ctx: Ctx, st: Status, cmd: p.OutputCommand) -> None:
    st.has_output = True
    st.result = cmd.value if cmd.failure is None else None
    st.failure = cmd.failure


COMMAND_HANDLERS: dict[type[p.Message], _Handler] = {
    p.OutputCommand: _output,
    p.GetLazyStateCommand: state.get_lazy,
    p.SetStateCommand: state.set_state,
    p.ClearStateCommand: state.clear,
    p.ClearAllStateCommand: state.clear_all,
    p.GetLazyStateKeysCommand: state.get_lazy_keys,
    p.GetEagerStateCommand: _noop,
    p.GetEagerStateKeysCommand: _noop,
    p.GetPromiseCommand: promises.get,
    p.PeekPromiseCommand: promises.peek,
    p.CompletePromiseCommand: promises.complete,
    p.SleepCommand: sleep.sleep,
    p.CallCommand: calls.call,
    p.OneWayCallCommand: calls.one_way,
    p.SendSignalCommand: signals.send_signal,
    p.RunCommand: _noop,
    p.AttachInvocationCommand: attach.attach,
    p.GetInvocationOutputCommand: attach.get_output,
    p.CompleteAwakeableCommand: signals.complete_awakeable,
}

_TIMERS: dict[int, Callable[[Ctx, Timer], None]] = {
    TimerKind.SLEEP: sleep.wake,
    TimerKind.RETRY: attempt.retry_due,
    TimerKind.START: invoke.start_scheduled,
    TimerKind.CLEANUP: complete.cleanup_due,
}


class StateMachine:
    def __init__(self, registry: Registry, config: Config) -> None:
        self.registry = registry
        self.config = config

    def apply(self, ctx: Ctx, cmd: p.Message) -> None:
        if isinstance(cmd, Effects):
            self._effects(ctx, cmd)
        elif isinstance(cmd, Invoke):
            invoke.invoke(ctx, cmd)
        elif isinstance(cmd, TimerFired):
            raw = ctx.tx.get("timers", cmd.key)
            if raw is None:
                return
            ctx.tx.delete("timers", cmd.key)
            timer = Timer.decode(raw)
            _TIMERS[timer.kind](ctx, timer)
        elif isinstance(cmd, Signal):
            signals.external(ctx, cmd)
        elif isinstance(cmd, Manage):
            manage.manage(ctx, cmd)
        elif isinstance(cmd, Attach):
            attach_lc.attach(ctx, cmd)
        elif isinstance(cmd, SchemaUpdate):
            self._schema(ctx, cmd)
        elif isinstance(cmd, Expire):
            complete.expire(ctx, cmd)
        elif isinstance(cmd, KafkaIngest):
            kafka.ingest(ctx, cmd)
        elif isinstance(cmd, SubscriptionUpdate):
            kafka.update(ctx, cmd)
        elif isinstance(cmd, DeadLettered):
            kafka.dead_lettered(ctx, cmd)
        elif isinstance(cmd, EgressCommitted):
            egress.committed(ctx, cmd)
        elif isinstance(cmd, EgressIdentity):
            egress.identity(ctx, cmd)
        elif isinstance(cmd, Proposal):
            if leadership.admit(ctx, cmd):
                inner = decode_command(cmd.command)
                if not isinstance(inner, Proposal | AnnounceLeader):  # (never nested)
                    self.apply(ctx, inner)
        elif isinstance(cmd, AnnounceLeader):
            leadership.announce(ctx, cmd)
        elif isinstance(cmd, Routed):
            shuffle.routed(ctx, cmd)
        elif isinstance(cmd, ShuffleDelivered):
            shuffle.delivered(ctx, cmd)

    def _effects(self, ctx: Ctx, cmd: Effects) -> None:
        st = ctx.status(cmd.id)
        if st is None:
            return

        def current() -> bool:
            # A stream from an earlier attempt, or one whose attempt just ended, may not
            # append anything; a frame can end the attempt, so this is asked per frame.
            return st.phase == Phase.INVOKED and st.epoch == cmd.epoch

        if not current():
            return
        if cmd.frames:
            try:
                frames = p.decode_all(cmd.frames)
            except ValueError as e:  # DecodeError, or bytes that are no UTF-8 where text is due
                # A handler that speaks garbage fails its attempt; it never stalls the log.
                msg = f"malformed frame (protocol violation): {e}"
                attempt.attempt_failed(ctx, st, 571, msg, None)
                return
            for frame in frames:
                if not current():
                    return
                self._frame(ctx, st, frame)
        if cmd.transport_failure is not None and current():
            f = cmd.transport_failure
            attempt.attempt_failed(ctx, st, f.code, f.message, None)

    def _frame(self, ctx: Ctx, st: Status, frame: p.Frame) -> None:
        msg = frame.message
        code = frame.type
        if p.is_command(code):
            raw = p.encode_raw(code, frame.raw)
            ctx.append_journal(st, raw)
            st.retry_count = 0
            handler = COMMAND_HANDLERS.get(type(msg)) if msg is not None else None
            if handler is not None:
                handler(ctx, st, msg)
            ctx.put_status(st)
        elif isinstance(msg, p.ProposeRunCompletionMessage):
            n = p.RunCompletionNotification(completion_id=msg.result_completion_id)
            if msg.failure is not None:
                n.failure = msg.failure
            elif msg.value is not None:
                n.value = msg.value
            else:
                n.value = b""
            ctx.notify(st.id, n)
        elif isinstance(msg, p.EndMessage):
            if st.has_output:
                complete.complete(ctx, st, st.result, st.failure)
            else:
                attempt.attempt_failed(ctx, st, 500, "the handler ended without an output", None)
        elif isinstance(msg, p.SuspensionMessage):
            ctx.actions.append(a.AbortAttempt(st.id, st.epoch))
            attempt.suspend(ctx, st, msg)
        elif isinstance(msg, p.ErrorMessage):
            attempt.attempt_failed(ctx, st, msg.code, msg.message, msg.next_retry_delay)

    def _schema(self, ctx: Ctx, cmd: SchemaUpdate) -> None:
        if cmd.deployment_json:
            dep = Deployment.from_json_bytes(cmd.deployment_json)
            ctx.tx.put("schema", dep.id.encode(), cmd.deployment_json)
            self.registry.upsert(dep)
            ctx.reply(cmd.waiter, "ok", message=dep.id)
        elif cmd.remove_id:
            found = self.registry.remove(cmd.remove_id)
            ctx.tx.delete("schema", cmd.remove_id.encode())
            if found:
                ctx.reply(cmd.waiter, "ok", message=cmd.remove_id)
            else:
                ctx.reply(cmd.waiter, "error", code=404, message="deployment not found")
        ctx.actions.append(a.SchemaChanged())

    def load(self, store_scan: Any) -> None:
        for _, raw in store_scan:
            self.registry.upsert(Deployment.from_json_bytes(raw))


def new_context(tx: Any, sm: StateMachine) -> Ctx:
    return Ctx(tx, sm.registry, sm.config)
