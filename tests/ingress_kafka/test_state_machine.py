"""KafkaIngest in the state machine, commands in and actions out: offsets at or below the
last applied one are skipped in the same write, bad records become dead-letter rows (or
failed invocations), a handler's terminal failure dead-letters its record, and a reset
forgets a subscription's positions."""

from __future__ import annotations

import struct

from sluice import protocol as p
from sluice.broker.ids import InvocationId
from sluice.broker.partition import actions as a
from sluice.broker.partition._records import (
    DeadLettered,
    KafkaIngest,
    KafkaRecord,
    Kind,
    Phase,
    Status,
    SubscriptionUpdate,
)
from sluice.broker.partition.lifecycle.kafka import DeadLetter, producer_id, subscription_prefix
from tests.broker.test_state_machine import Harness

PRODUCER = producer_id("sub", "orders", 0)


def batch(*offsets: int, dlq: str = "", bad: tuple[int, ...] = ()) -> KafkaIngest:
    records = [
        KafkaRecord(
            offset=o,
            key=f"k{o % 2}",
            input=b"1",
            headers=[
                p.Header(key="kafka.topic", value="orders"),
                p.Header(key="kafka.partition", value="0"),
                p.Header(key="kafka.offset", value=str(o)),
                p.Header(key="kafka.key", value=f"k{o % 2}"),
            ],
            reason="bad json" if o in bad else "",
            raw_key=f"k{o % 2}".encode() if o in bad else None,
            raw_value=b"{" if o in bad else None,
        )
        for o in offsets
    ]
    return KafkaIngest(
        subscription="sub", producer=PRODUCER, topic="orders", partition=0, service="Obj",
        handler="ex", kind=Kind.EXCLUSIVE, dead_letter_topic=dlq, records=records, waiter=9,
        generation=1,
    )  # fmt: skip


def replies(actions: list[a.Action]) -> list[str]:
    return [x.message for x in actions if isinstance(x, a.Reply)]


def running(h: Harness) -> list[Status]:
    return [Status.decode(v) for _, v in h.store.scan("status", b"")]


def test_offsets_already_applied_are_skipped_in_the_same_write() -> None:
    h = Harness()
    acts = h.apply(batch(0, 1, 2, 3))
    assert replies(acts) == ["4"]  # four invocations created
    assert struct.unpack(">Q", h.store.get("kafka_dedup", PRODUCER) or b"")[0] == 3
    # One per key runs, the other waits in its key's inbox, in offset order.
    assert sum(isinstance(x, a.StartAttempt) for x in acts) == 2
    assert sorted(s.phase for s in running(h)) == [Phase.INBOXED] * 2 + [Phase.INVOKED] * 2
    # The consumer sends 2..5 again (a crash before the offset commit): only 4 and 5 are new.
    acts = h.apply(batch(2, 3, 4, 5))
    assert replies(acts) == ["2"]
    assert len(running(h)) == 6
    assert struct.unpack(">Q", h.store.get("kafka_dedup", PRODUCER) or b"")[0] == 5


def test_bad_records_become_dead_letter_rows_with_reasons() -> None:
    h = Harness()
    acts = h.apply(batch(0, 1, 2, dlq="orders-dlq", bad=(1,)))
    assert replies(acts) == ["2"]
    pending = [x for x in acts if isinstance(x, a.DeadLetterPending)]
    assert len(pending) == 1
    row = DeadLetter.decode(h.store.get("kafka_dlq", pending[0].key) or b"")
    hdr = {x.key: x.value for x in row.headers}
    assert (row.topic, row.key, row.value) == ("orders-dlq", b"k1", b"{")
    assert hdr["sluice-dlq-reason"] == "bad json" and hdr["sluice-dlq-offset"] == "1"
    assert hdr["sluice-dlq-subscription"] == "sub" and hdr["sluice-dlq-topic"] == "orders"
    # Delivered: the row goes, through the log.
    h.apply(DeadLettered(keys=[pending[0].key]))
    assert list(h.store.scan("kafka_dlq", b"")) == []


def test_without_a_dead_letter_topic_a_bad_record_is_a_failed_invocation() -> None:
    h = Harness()
    acts = h.apply(batch(0, bad=(0,)))
    assert replies(acts) == ["0"]
    [st] = running(h)
    assert st.phase == Phase.COMPLETED and st.failure is not None
    assert "bad json" in st.failure.message and st.last_failure == "[400] bad json"


def test_a_terminal_failure_dead_letters_the_record_and_frees_the_slot() -> None:
    h = Harness()
    acts = h.apply(batch(0, dlq="orders-dlq"))
    start = next(x for x in acts if isinstance(x, a.StartAttempt))
    fail = p.Failure(code=422, message="refused")
    # The handler's stream: an output carrying the failure, then the end.
    acts = h.effects(
        InvocationId(start.id), start.epoch, p.OutputCommand(failure=fail), p.EndMessage()
    )
    assert any(isinstance(x, a.KafkaDone) and x.subscription == "sub" for x in acts)
    [pending] = [x for x in acts if isinstance(x, a.DeadLetterPending)]
    row = DeadLetter.decode(h.store.get("kafka_dlq", pending.key) or b"")
    hdr = {x.key: x.value for x in row.headers}
    assert hdr["sluice-dlq-reason"] == "handler failed terminally: [422] refused"
    assert hdr["sluice-dlq-offset"] == "0" and hdr["sluice-dlq-invocation-id"].startswith("inv_1")
    assert (row.key, row.value) == (b"k0", b"1")


def test_reset_forgets_the_positions_of_one_subscription() -> None:
    h = Harness()
    other = producer_id("other", "orders", 0)
    h.apply(batch(0, 1))
    theirs = batch(0)
    theirs.producer, theirs.subscription = other, "other"
    h.apply(theirs)
    reset = SubscriptionUpdate(
        table="subscriptions", name="sub", row=b"{}", reset=subscription_prefix("sub"), waiter=3
    )
    acts = h.apply(reset)
    assert any(isinstance(x, a.SubscriptionsChanged) for x in acts)
    assert h.store.get("kafka_dedup", PRODUCER) is None
    assert h.store.get("kafka_dedup", other) is not None
