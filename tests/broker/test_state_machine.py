"""The state machine as commands in, actions out: no sockets, no disk, no clock."""

from __future__ import annotations

from sluice import protocol as p
from sluice.broker.ids import InvocationId, awakeable_id, partition_key_of
from sluice.broker.partition import actions as a
from sluice.broker.partition._context import Config, Ctx, RetryPolicy
from sluice.broker.partition._records import (
    Effects,
    Expire,
    Invoke,
    Kind,
    Manage,
    Phase,
    SchemaUpdate,
    Signal,
    Sink,
    SinkKind,
    Status,
    Terminate,
    TimerFired,
)
from sluice.broker.partition.state_machine import StateMachine
from sluice.broker.schema import Deployment, Registry
from sluice.broker.storage import MemoryStore, Transaction

DEPLOYMENT = Deployment(
    id="dp_test",
    uri="http://127.0.0.1:1",
    use_http_11=False,
    protocol_version=6,
    services=[
        {"name": "Svc", "ty": "SERVICE", "handlers": [{"name": "h"}]},
        {
            "name": "Obj",
            "ty": "VIRTUAL_OBJECT",
            "handlers": [{"name": "ex", "ty": "EXCLUSIVE"}, {"name": "sh", "ty": "SHARED"}],
        },
        {
            "name": "Wf",
            "ty": "WORKFLOW",
            "handlers": [{"name": "run", "ty": "WORKFLOW"}, {"name": "sig", "ty": "SHARED"}],
        },
    ],
)


class Harness:
    """Applies commands one batch each at a given time and returns the actions."""

    def __init__(self, max_attempts: int = 3) -> None:
        self.store = MemoryStore()
        self.sm = StateMachine(Registry(), Config(retry=RetryPolicy(max_attempts=max_attempts)))
        self.now = 1_000_000
        self.apply(SchemaUpdate(deployment_json=DEPLOYMENT.to_json_bytes()))

    def apply(self, *cmds: p.Message) -> list[a.Action]:
        tx = Transaction(self.store)
        ctx = Ctx(tx, self.sm.registry, self.sm.config)
        ctx.now = self.now
        for cmd in cmds:
            self.sm.apply(ctx, cmd)
        ctx.flush()
        tx.commit()
        return ctx.actions

    def status(self, iid: InvocationId) -> Status | None:
        raw = self.store.get("status", iid.raw)
        return Status.decode(raw) if raw else None

    def effects(self, iid: InvocationId, epoch: int, *msgs: p.Message) -> list[a.Action]:
        return self.apply(
            Effects(id=iid.raw, epoch=epoch, frames=b"".join(p.encode(m) for m in msgs))
        )


def invoke(
    service: str, handler: str, key: str = "", kind: int = Kind.SERVICE, waiter: int = 7
) -> tuple[Invoke, InvocationId]:
    iid = InvocationId.generate(partition_key_of(key) if key else None)
    return (
        Invoke(
            id=iid.raw,
            service=service,
            handler=handler,
            key=key,
            kind=kind,
            input=b'"x"',
            sink=Sink(kind=SinkKind.INGRESS, waiter=waiter),
        ),
        iid,
    )


def of(actions: list[a.Action], cls: type) -> list:  # type: ignore[type-arg]
    return [x for x in actions if isinstance(x, cls)]


def test_invoke_starts_attempt_with_input_and_completes() -> None:
    h = Harness()
    cmd, iid = invoke("Svc", "h")
    acts = h.apply(cmd)
    (start,) = of(acts, a.StartAttempt)
    frames = p.decode_all(start.frames)
    assert isinstance(frames[0].message, p.StartMessage) and frames[0].message.known_entries == 1
    assert isinstance(frames[1].message, p.InputCommand) and frames[1].message.value == b'"x"'
    acts = h.effects(iid, 1, p.OutputCommand(value=b'"ok"'), p.EndMessage())
    (reply,) = of(acts, a.Reply)
    assert (reply.waiter, reply.kind, reply.value) == (7, "result", b'"ok"')
    st = h.status(iid)
    assert st is not None and st.phase == Phase.COMPLETED and st.result == b'"ok"'
    assert st.journal_len == 0  # the journal goes; the result stays for attach
    h.apply(Expire(upto=h.now + 86_400_000 - 1))
    assert h.status(iid) is not None
    h.apply(Expire(upto=h.now + 86_400_000))
    assert h.status(iid) is None


def test_stale_epoch_cannot_append() -> None:
    h = Harness()
    cmd, iid = invoke("Svc", "h")
    h.apply(cmd)
    h.effects(iid, 1, p.ErrorMessage(code=500, message="boom"))
    st = h.status(iid)
    assert st is not None and st.phase == Phase.BACKING_OFF
    h.now += 10_000
    timer_key = h.store.scan("timers", b"").__next__()[0]
    acts = h.apply(TimerFired(key=timer_key))
    assert of(acts, a.StartAttempt)[0].epoch == 2
    # The first attempt's stream says something late: dropped.
    assert h.effects(iid, 1, p.OutputCommand(value=b"1"), p.EndMessage()) == []
    assert h.status(iid).phase == Phase.INVOKED  # type: ignore[union-attr]


def test_pause_after_last_attempt() -> None:
    h = Harness(max_attempts=2)
    cmd, iid = invoke("Svc", "h")
    h.apply(cmd)
    h.effects(iid, 1, p.ErrorMessage(code=500, message="a"))
    h.now += 60_000
    h.apply(TimerFired(key=next(iter(h.store.scan("timers", b"")))[0]))
    h.effects(iid, 2, p.ErrorMessage(code=500, message="b"))
    st = h.status(iid)
    assert st is not None and st.phase == Phase.PAUSED and "b" in st.last_failure
    acts = h.apply(Manage(id=iid.raw, action=Terminate.RESUME, waiter=3))
    assert of(acts, a.StartAttempt)[0].epoch == 3


def test_exclusive_inbox_is_fifo_and_shared_runs_at_once() -> None:
    h = Harness()
    first, id1 = invoke("Obj", "ex", "k", Kind.EXCLUSIVE, waiter=1)
    second, id2 = invoke("Obj", "ex", "k", Kind.EXCLUSIVE, waiter=2)
    shared, id3 = invoke("Obj", "sh", "k", Kind.SHARED, waiter=3)
    acts = h.apply(first, second, shared)
    assert [s.id for s in of(acts, a.StartAttempt)] == [id1.raw, id3.raw]
    assert h.status(id2).phase == Phase.INBOXED  # type: ignore[union-attr]
    acts = h.effects(
        id1, 1, p.SetStateCommand(key=b"n", value=b"1"), p.OutputCommand(value=b""), p.EndMessage()
    )
    (start,) = of(acts, a.StartAttempt)
    assert start.id == id2.raw
    state = p.decode_all(start.frames)[0].message
    assert isinstance(state, p.StartMessage) and state.state_map == [
        p.StateEntry(key=b"n", value=b"1")
    ]


def test_lazy_state_run_and_suspension_resume() -> None:
    h = Harness()
    cmd, iid = invoke("Obj", "ex", "k", Kind.EXCLUSIVE)
    h.apply(cmd)
    acts = h.effects(
        iid,
        1,
        p.GetLazyStateCommand(key=b"n", result_completion_id=1),
        p.RunCommand(result_completion_id=2),
    )
    (n,) = of(acts, a.SendToAttempt)
    assert p.decode_all(n.frame)[0].message == p.GetLazyStateCompletionNotification(
        completion_id=1, void=True
    )
    # Suspend on the run's completion, then the proposal arrives in a later stream: it wakes.
    h.effects(iid, 1, p.SuspensionMessage(waiting_completions=[2]))
    assert h.status(iid).phase == Phase.SUSPENDED  # type: ignore[union-attr]


def test_sleep_timer_wakes_suspended_invocation() -> None:
    h = Harness()
    cmd, iid = invoke("Svc", "h")
    h.apply(cmd)
    acts = h.effects(
        iid,
        1,
        p.SleepCommand(wake_up_time=h.now + 500, result_completion_id=1),
        p.SuspensionMessage(waiting_completions=[1]),
    )
    (timer,) = of(acts, a.RegisterTimer)
    assert timer.fire_at == h.now + 500
    h.now += 500
    acts = h.apply(TimerFired(key=timer.key))
    (start,) = of(acts, a.StartAttempt)
    msgs = [f.message for f in p.decode_all(start.frames)]
    assert msgs[-1] == p.SleepCompletionNotification(completion_id=1, void=True)
    assert msgs[0].known_entries == 3  # type: ignore[union-attr]


def test_call_notifies_invocation_id_then_result() -> None:
    h = Harness()
    cmd, caller = invoke("Svc", "h")
    h.apply(cmd)
    acts = h.effects(
        caller,
        1,
        p.CallCommand(
            service_name="Obj",
            handler_name="ex",
            key="k",
            parameter=b"1",
            invocation_id_notification_idx=1,
            result_completion_id=2,
        ),
    )
    sent = [p.decode_all(x.frame)[0].message for x in of(acts, a.SendToAttempt)]
    assert isinstance(sent[0], p.CallInvocationIdCompletionNotification)
    callee = InvocationId.parse(sent[0].invocation_id)  # type: ignore[arg-type]
    (start,) = of(acts, a.StartAttempt)
    assert start.id == callee.raw
    acts = h.effects(callee, 1, p.OutputCommand(value=b"42"), p.EndMessage())
    (to_caller,) = of(acts, a.SendToAttempt)
    assert p.decode_all(to_caller.frame)[0].message == p.CallCompletionNotification(
        completion_id=2, value=b"42"
    )


def test_awakeable_signal_from_ingress() -> None:
    h = Harness()
    cmd, iid = invoke("Svc", "h")
    h.apply(cmd)
    h.effects(iid, 1, p.SuspensionMessage(waiting_signals=[17]))
    target, idx = iid, 17
    assert awakeable_id(target, idx).startswith("prom_1")
    acts = h.apply(Signal(target=iid.raw, idx=17, value=b'"v"', waiter=9))
    assert of(acts, a.StartAttempt)
    assert [r.kind for r in of(acts, a.Reply)] == ["ok"]


def test_running_index_follows_the_phase() -> None:
    """The "running" table lists exactly the INVOKED invocations: a restart resumes those
    without decoding every retained status."""
    h = Harness()

    def running() -> set[bytes]:
        return {k for k, _ in h.store.scan("running", b"")}

    cmd, iid = invoke("Svc", "h")
    h.apply(cmd)
    assert running() == {iid.raw}
    h.effects(iid, 1, p.SuspensionMessage(waiting_signals=[17]))
    assert running() == set()
    h.apply(Signal(target=iid.raw, idx=17, value=b'"v"', waiter=9))
    assert running() == {iid.raw}
    h.effects(iid, 2, p.OutputCommand(value=b"1"), p.EndMessage())
    assert running() == set()


def test_awakeable_resolved_twice_keeps_the_first() -> None:
    """A client that resends a resolve (its answer was lost in a broker crash), or a second
    resolver: both get 202, and only the first value reaches the journal, so a replay sees
    what the first attempt saw."""
    h = Harness()
    cmd, iid = invoke("Svc", "h")
    h.apply(cmd)
    h.effects(iid, 1, p.SuspensionMessage(waiting_signals=[17]))
    h.apply(Signal(target=iid.raw, idx=17, value=b'"first"', waiter=9))
    before = h.status(iid)
    assert before is not None
    acts = h.apply(Signal(target=iid.raw, idx=17, value=b'"second"', waiter=10))
    assert [r.kind for r in of(acts, a.Reply)] == ["ok"]
    assert not of(acts, a.SendToAttempt) and not of(acts, a.StartAttempt)
    after = h.status(iid)
    assert after is not None and after.journal_len == before.journal_len


def test_awakeable_of_a_finished_invocation_is_accepted() -> None:
    """restate-server answers 202 here too: a resent resolve must not look like a failure."""
    h = Harness()
    cmd, iid = invoke("Svc", "h")
    h.apply(cmd)
    h.effects(iid, 1, p.OutputCommand(value=b"1"), p.EndMessage())
    acts = h.apply(Signal(target=iid.raw, idx=17, value=b'"late"', waiter=9))
    assert [r.kind for r in of(acts, a.Reply)] == ["ok"]
    unknown = InvocationId.generate(None)
    acts = h.apply(Signal(target=unknown.raw, idx=17, value=b'"never"', waiter=10))
    assert [r.kind for r in of(acts, a.Reply)] == ["ok"]
    assert h.status(unknown) is None


def test_workflow_promise_and_run_once() -> None:
    h = Harness()
    wf_id = InvocationId.derive(partition_key_of("w"), "wf", "Wf", "w")
    run = Invoke(
        id=wf_id.raw,
        service="Wf",
        handler="run",
        key="w",
        kind=Kind.WORKFLOW,
        sink=Sink(kind=SinkKind.INGRESS, waiter=1),
        retention_ms=1000,
    )
    h.apply(run)
    h.effects(
        wf_id,
        1,
        p.GetPromiseCommand(key="p", result_completion_id=1),
        p.SuspensionMessage(waiting_completions=[1]),
    )
    sig, sig_id = invoke("Wf", "sig", "w", Kind.SHARED)
    h.apply(sig)
    acts = h.effects(
        sig_id,
        1,
        p.CompletePromiseCommand(key="p", completion_value=b'"s"', result_completion_id=1),
    )
    assert [x.id for x in of(acts, a.StartAttempt)] == [wf_id.raw]  # the run resumes
    h.effects(wf_id, 2, p.OutputCommand(value=b'"done"'), p.EndMessage())
    again = Invoke(
        id=wf_id.raw,
        service="Wf",
        handler="run",
        key="w",
        kind=Kind.WORKFLOW,
        sink=Sink(kind=SinkKind.INGRESS, waiter=2),
    )
    acts = h.apply(again)
    assert not of(acts, a.StartAttempt)
    assert [(r.waiter, r.code) for r in of(acts, a.Reply)] == [(2, 409)]


def test_kill_answers_waiters_and_frees_key() -> None:
    h = Harness()
    first, id1 = invoke("Obj", "ex", "k", Kind.EXCLUSIVE, waiter=1)
    second, id2 = invoke("Obj", "ex", "k", Kind.EXCLUSIVE, waiter=2)
    h.apply(first, second)
    acts = h.apply(Manage(id=id1.raw, action=Terminate.KILL, waiter=5))
    replies = {r.waiter: r for r in of(acts, a.Reply)}
    assert replies[1].code == 409 and replies[5].kind == "ok"
    assert [s.id for s in of(acts, a.StartAttempt)] == [id2.raw]
    assert of(acts, a.AbortAttempt)


def test_replay_is_deterministic() -> None:
    """The same commands give the same tables."""

    def run() -> dict[tuple[str, bytes], bytes]:
        h = Harness()
        cmd = Invoke(
            id=b"\x01" * 24, service="Obj", handler="ex", key="k", kind=Kind.EXCLUSIVE, input=b"1"
        )
        h.apply(cmd)
        h.effects(
            InvocationId(b"\x01" * 24),
            1,
            p.SetStateCommand(key=b"a", value=b"2"),
            p.SleepCommand(wake_up_time=5, result_completion_id=1),
        )
        return {
            (cf, k): v
            for cf in ("status", "journal", "state", "timers", "locks")
            for k, v in h.store.scan(cf, b"")
        }

    assert run() == run()


def test_garbage_from_a_handler_fails_the_attempt() -> None:
    h = Harness()
    cmd, iid = invoke("Svc", "h")
    h.apply(cmd)
    acts = h.apply(Effects(id=iid.raw, epoch=1, frames=b"\x7f\x7f\x00\x00\x00\x00\x00\x01x"))
    st = h.status(iid)
    assert (
        st is not None and st.phase == Phase.BACKING_OFF and "protocol violation" in st.last_failure
    )
    assert of(acts, a.AbortAttempt)


def test_service_retry_policy_from_the_manifest_can_kill() -> None:
    h = Harness(max_attempts=100)
    dep = Deployment(
        id="dp_r",
        uri="http://127.0.0.1:2",
        use_http_11=False,
        protocol_version=6,
        services=[
            {
                "name": "Strict",
                "ty": "SERVICE",
                "handlers": [{"name": "h"}],
                "retryPolicyMaxAttempts": 2,
                "retryPolicyOnMaxAttempts": "KILL",
                "retryPolicyInitialInterval": 10,
            }
        ],
    )
    h.apply(SchemaUpdate(deployment_json=dep.to_json_bytes()))
    cmd, iid = invoke("Strict", "h")
    h.apply(cmd)
    acts = h.effects(iid, 1, p.ErrorMessage(code=500, message="first"))
    (timer,) = of(acts, a.RegisterTimer)
    assert timer.fire_at == h.now + 10
    h.now += 10
    h.apply(TimerFired(key=timer.key))
    acts = h.effects(iid, 2, p.ErrorMessage(code=500, message="second"))
    (reply,) = of(acts, a.Reply)
    assert reply.code == 500 and reply.message == "second"


def test_lazy_state_services_get_no_state_map() -> None:
    h = Harness()
    dep = Deployment(
        id="dp_l",
        uri="http://127.0.0.1:3",
        use_http_11=False,
        protocol_version=6,
        services=[
            {
                "name": "Lazy",
                "ty": "VIRTUAL_OBJECT",
                "enableLazyState": True,
                "handlers": [{"name": "ex", "ty": "EXCLUSIVE"}],
            }
        ],
    )
    h.apply(SchemaUpdate(deployment_json=dep.to_json_bytes()))
    first, id1 = invoke("Lazy", "ex", "k", Kind.EXCLUSIVE)
    h.apply(first)
    h.effects(
        id1, 1, p.SetStateCommand(key=b"a", value=b"1"), p.OutputCommand(value=b""), p.EndMessage()
    )
    second, _ = invoke("Lazy", "ex", "k", Kind.EXCLUSIVE)
    (start,) = of(h.apply(second), a.StartAttempt)
    msg = p.decode_all(start.frames)[0].message
    assert isinstance(msg, p.StartMessage) and msg.partial_state and msg.state_map == []


def test_invalid_utf8_in_a_frame_fails_the_attempt() -> None:
    # SuspensionMessage field 3 (waiting_named_signals) is text: b"\xff" is no UTF-8. It once
    # escaped as UnicodeDecodeError, the processor skipped the entry and the invocation stayed
    # "invoked" for good.
    h = Harness()
    cmd, iid = invoke("Svc", "h")
    h.apply(cmd)
    frame = p.encode_raw(p.TYPE_CODES[p.SuspensionMessage], b"\x1a\x01\xff")
    acts = h.apply(Effects(id=iid.raw, epoch=1, frames=frame))
    st = h.status(iid)
    assert st is not None and st.phase == Phase.BACKING_OFF, st
    assert "malformed frame" in st.last_failure and "UTF-8" in st.last_failure
    assert of(acts, a.AbortAttempt)
