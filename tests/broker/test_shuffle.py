"""Two partitions with tables of their own (lifecycle/shuffle.py), commands in, actions out: an
effect on an invocation of the other partition waits in the ``shuffle`` table, reaches the
other partition as ``Routed`` (here carried by the test, as a leader's shuffler would), is
applied there once however often it arrives, and leaves the table once delivered."""

from __future__ import annotations

from sluice import protocol as p
from sluice.broker.ids import InvocationId, awakeable_id, partition_key_of
from sluice.broker.partition import actions as a
from sluice.broker.partition._context import Config, Ctx
from sluice.broker.partition._records import (
    Invoke,
    Manage,
    Phase,
    Routed,
    SchemaUpdate,
    ShuffleDelivered,
    Sink,
    SinkKind,
    Status,
    Terminate,
)
from sluice.broker.partition.lifecycle.shuffle import outgoing
from sluice.broker.partition.state_machine import StateMachine
from sluice.broker.schema import Registry
from sluice.broker.storage import MemoryStore, Transaction
from tests.broker.test_state_machine import DEPLOYMENT, of


class Partition:
    def __init__(self, index: int, processors: int = 2) -> None:
        self.index = index
        self.store = MemoryStore()
        self.sm = StateMachine(Registry(), Config(processors=processors))
        self.apply(SchemaUpdate(deployment_json=DEPLOYMENT.to_json_bytes()))

    def apply(self, *cmds: p.Message) -> list[a.Action]:
        tx = Transaction(self.store)
        ctx = Ctx(tx, self.sm.registry, self.sm.config, self.index)
        ctx.now = 1_000_000
        for cmd in cmds:
            self.sm.apply(ctx, cmd)
        ctx.flush()
        tx.commit()
        return ctx.actions

    def effects(self, iid: InvocationId, epoch: int, *msgs: p.Message) -> list[a.Action]:
        from sluice.broker.partition._records import Effects

        frames = b"".join(p.encode(m) for m in msgs)
        return self.apply(Effects(id=iid.raw, epoch=epoch, frames=frames))

    def status(self, iid: InvocationId) -> Status | None:
        raw = self.store.get("status", iid.raw)
        return Status.decode(raw) if raw else None

    def waiting(self, target: int) -> list[int]:
        return [seq for seq, _ in outgoing(self.store, target)]


def carry(src: Partition, dst: Partition, *, again: bool = False) -> list[a.Action]:
    """Append what ``src`` keeps for ``dst`` to ``dst``'s log (here: apply it), then record
    the delivery in ``src``. ``again``: the leader died before recording it, and its successor
    sends the same rows a second time."""
    rows = list(outgoing(src.store, dst.index))
    acts: list[a.Action] = []
    for _ in range(2 if again else 1):
        for seq, cmd in rows:
            acts += dst.apply(Routed(source=src.index, seq=seq, command=cmd))
    if rows:
        src.apply(ShuffleDelivered(target=dst.index, upto=rows[-1][0]))
    return acts


def key_in(partition: int, processors: int = 2) -> str:
    """An object key whose invocations belong to ``partition``."""
    return next(
        k for k in (f"k{i}" for i in range(1000)) if partition_key_of(k) % processors == partition
    )


def service_call(partition: int, processors: int = 2) -> tuple[Invoke, InvocationId]:
    pk = next(pk for pk in range(1000, 2000) if pk % processors == partition)
    iid = InvocationId.generate(pk)
    sink = Sink(kind=SinkKind.INGRESS, waiter=7)
    return Invoke(id=iid.raw, service="Svc", handler="h", input=b'"x"', sink=sink), iid


def call_obj(key: str) -> p.CallCommand:
    return p.CallCommand(
        service_name="Obj",
        handler_name="ex",
        key=key,
        parameter=b"1",
        invocation_id_notification_idx=1,
        result_completion_id=2,
    )


def test_a_call_to_another_partition_runs_there_and_its_result_comes_back() -> None:
    p0, p1 = Partition(0), Partition(1)
    cmd, caller = service_call(0)
    p0.apply(cmd)
    acts = p0.effects(caller, 1, call_obj(key_in(1)))
    sent = [p.decode_all(x.frame)[0].message for x in of(acts, a.SendToAttempt)]
    assert isinstance(sent[0], p.CallInvocationIdCompletionNotification), "the id is local"
    callee = InvocationId.parse(sent[0].invocation_id)  # type: ignore[arg-type]
    assert not of(acts, a.StartAttempt), "the callee is not P0's"
    assert of(acts, a.ShuffleReady) == [a.ShuffleReady(1)]
    assert p0.status(callee) is None
    p0.effects(caller, 1, p.SuspensionMessage(waiting_completions=[2]))

    (start,) = of(carry(p0, p1), a.StartAttempt)
    assert start.id == callee.raw
    assert p0.waiting(1) == [], "delivered rows leave the table"
    acts = p1.effects(callee, 1, p.OutputCommand(value=b"42"), p.EndMessage())
    assert of(acts, a.ShuffleReady) == [a.ShuffleReady(0)]

    (resume,) = of(carry(p1, p0), a.StartAttempt)  # the caller was suspended: it resumes
    assert resume.id == caller.raw
    journal = [p.decode_all(f)[0].message for f in _journal(p0, caller)]
    assert journal[-1] == p.CallCompletionNotification(completion_id=2, value=b"42")


def test_rows_sent_twice_are_applied_once() -> None:
    p0, p1 = Partition(0), Partition(1)
    cmd, caller = service_call(0)
    p0.apply(cmd)
    p0.effects(caller, 1, call_obj(key_in(1)), p.SuspensionMessage(waiting_completions=[2]))
    starts = of(carry(p0, p1, again=True), a.StartAttempt)
    assert len(starts) == 1, "the callee was invoked twice"
    callee = InvocationId(starts[0].id)
    p1.effects(callee, 1, p.OutputCommand(value=b"42"), p.EndMessage())
    carry(p1, p0, again=True)
    journal = [p.decode_all(f)[0].message for f in _journal(p0, caller)]
    results = [m for m in journal if isinstance(m, p.CallCompletionNotification)]
    assert results == [p.CallCompletionNotification(completion_id=2, value=b"42")]


def test_attach_and_output_of_an_invocation_of_another_partition() -> None:
    p0, p1 = Partition(0), Partition(1)
    target_cmd, target = service_call(1)
    p1.apply(target_cmd)
    cmd, caller = service_call(0)
    p0.apply(cmd)
    p0.effects(
        caller,
        1,
        p.GetInvocationOutputCommand(invocation_id=str(target), result_completion_id=1),
        p.AttachInvocationCommand(invocation_id=str(target), result_completion_id=2),
    )
    carry(p0, p1)
    carry(p1, p0)  # the output: none yet
    p1.effects(target, 1, p.OutputCommand(value=b'"done"'), p.EndMessage())
    carry(p1, p0)  # the attach: the result
    journal = [p.decode_all(f)[0].message for f in _journal(p0, caller)]
    assert p.GetInvocationOutputCompletionNotification(completion_id=1, void=True) in journal
    assert p.AttachInvocationCompletionNotification(completion_id=2, value=b'"done"') in journal


def test_killing_a_caller_kills_its_callee_in_another_partition() -> None:
    p0, p1 = Partition(0), Partition(1)
    cmd, caller = service_call(0)
    p0.apply(cmd)
    p0.effects(caller, 1, call_obj(key_in(1)), p.SuspensionMessage(waiting_completions=[2]))
    (start,) = of(carry(p0, p1), a.StartAttempt)
    callee = InvocationId(start.id)
    p0.apply(Manage(id=caller.raw, action=Terminate.KILL, waiter=9))
    caller_st = p0.status(caller)
    assert caller_st is not None and caller_st.phase == Phase.COMPLETED
    carry(p0, p1)
    st = p1.status(callee)
    assert st is not None and st.phase == Phase.COMPLETED
    assert st.failure is not None and st.failure.message == "killed"


def test_an_awakeable_of_another_partition_is_completed_there() -> None:
    p0, p1 = Partition(0), Partition(1)
    waiting_cmd, waiting = service_call(1)
    p1.apply(waiting_cmd)
    p1.effects(waiting, 1, p.SuspensionMessage(waiting_signals=[17]))
    cmd, resolver = service_call(0)
    p0.apply(cmd)
    p0.effects(
        resolver,
        1,
        p.CompleteAwakeableCommand(awakeable_id=awakeable_id(waiting, 17), value=b'"yes"'),
    )
    (resume,) = of(carry(p0, p1), a.StartAttempt)
    assert resume.id == waiting.raw


def test_one_processor_and_two_end_with_the_same_result() -> None:
    """The same program, every partition on one processor (all local, applied at once) and
    split over two (through the shuffle): the caller's journal ends the same."""
    one = Partition(0, processors=1)
    cmd, caller = service_call(0)
    key = key_in(1)
    one.apply(cmd)
    acts = one.effects(caller, 1, call_obj(key), p.SuspensionMessage(waiting_completions=[2]))
    assert not one.waiting(0) and not one.waiting(1), "one processor keeps no rows"
    (start,) = of(acts, a.StartAttempt)
    one.effects(InvocationId(start.id), 1, p.OutputCommand(value=b"42"), p.EndMessage())

    p0, p1 = Partition(0), Partition(1)
    p0.apply(cmd)
    p0.effects(caller, 1, call_obj(key), p.SuspensionMessage(waiting_completions=[2]))
    (start,) = of(carry(p0, p1), a.StartAttempt)
    p1.effects(InvocationId(start.id), 1, p.OutputCommand(value=b"42"), p.EndMessage())
    carry(p1, p0)
    assert list(_journal(one, caller)) == list(_journal(p0, caller))


def _journal(part: Partition, iid: InvocationId) -> list[bytes]:
    return [v for _, v in part.store.scan("journal", iid.raw)]


def test_a_kafka_record_of_a_key_of_another_partition_runs_there_and_fills_its_row_here() -> None:
    """P0 ingests a source partition (its position and outbox rows stay in P0); the record of a
    key that P1 owns becomes P1's invocation, and its result comes back to fill P0's row, which
    P0's egress then sends. Ingested again (a consumer that read it twice), nothing more."""
    import json

    from sluice.broker.partition._outbox import EgressTarget, OutboxEntry, OutboxReady, OutboxState
    from sluice.broker.partition._records import KafkaIngest, KafkaRecord, Kind

    p0, p1 = Partition(0), Partition(1)
    mine, theirs = key_in(0), key_in(1)
    ingest = KafkaIngest(
        subscription="s",
        producer=b"p" * 20,
        topic="in",
        service="Obj",
        handler="ex",
        kind=Kind.EXCLUSIVE,
        records=[
            KafkaRecord(offset=o, key=k, input=json.dumps({"i": o}).encode())
            for o, k in enumerate((mine, theirs))
        ],
        output=EgressTarget(cluster="c", topic="out"),
    )
    acts = p0.apply(ingest)
    assert len(of(acts, a.StartAttempt)) == 1, "the record of P0's key runs in P0"
    assert of(acts, a.ShuffleReady) == [a.ShuffleReady(1)]
    rows = [OutboxEntry.decode(v) for _, v in p0.store.scan("outbox", b"")]
    assert [r.state for r in rows] == [OutboxState.PENDING] * 2, "both rows reserved in P0"

    (start,) = of(carry(p0, p1), a.StartAttempt)
    theirs_id = InvocationId(start.id)
    assert p1.status(theirs_id) is not None and p0.status(theirs_id) is None
    acts = p1.effects(theirs_id, 1, p.OutputCommand(value=b'{"r":1}'), p.EndMessage())
    assert not list(p1.store.scan("outbox", b"")), "P1 has no row of its own for it"
    assert of(acts, a.ShuffleReady) == [a.ShuffleReady(0)], "the result goes back to P0"
    acts = carry(p1, p0)
    assert of(acts, OutboxReady), "P0's egress is told"
    rows = [OutboxEntry.decode(v) for _, v in p0.store.scan("outbox", b"")]
    assert [r.state for r in rows] == [OutboxState.PENDING, OutboxState.READY]
    assert rows[1].records[0].value == b'{"r":1}'

    acts = p0.apply(ingest)  # read twice: deduplicated by offset in P0
    assert not of(acts, a.StartAttempt) and not of(acts, a.ShuffleReady)
    assert p0.waiting(1) == []
