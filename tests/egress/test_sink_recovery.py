"""EgressSink recovery reads exactly to the end of each partition, or not at all.

A committed transaction leaves a control record after its records in each partition it
wrote; it takes an offset but is never delivered. Recovery sees that a partition is read to
its end by the consumer's position (which moves past control records), not by waiting for a
record that never comes. And the end is the high watermark, not the last stable offset: an
undecided transaction of another producer makes recovery wait, never resume from a stale
marker.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from sluice.connectors.kafka import (
    Consumer,
    KafkaError,
    TopicPartitionOffset,
    TransactionalProducer,
)
from sluice.connectors.kafka._egress import EgressSink, OutRecord, Progress
from tests.kafka import Tansu

from .conftest import new_topic

pytestmark = pytest.mark.kafka


def test_position_moves_past_a_transaction_marker(kafka: Tansu) -> None:
    topic = new_topic(kafka, 1)
    p = TransactionalProducer({"bootstrap.servers": kafka.bootstrap}, f"marker-{topic}")
    p.init()
    p.begin()
    for i in range(3):
        p.produce(topic, str(i).encode(), partition=0)
    p.commit()
    p.close()
    c = Consumer(
        {
            "bootstrap.servers": kafka.bootstrap,
            "group.id": f"g-{topic}",
            "isolation.level": "read_committed",
        }
    )
    try:
        assert c.watermarks(topic, 0) == (0, 4)  # 3 records and the commit marker
        c.assign([TopicPartitionOffset(topic, 0, 3)])
        deadline = time.monotonic() + 10
        pos = -1
        while pos < 4 and time.monotonic() < deadline:
            assert c.consume(10, 0.05) == []
            pos = c.positions([TopicPartitionOffset(topic, 0)])[(topic, 0)]
        assert pos == 4
    finally:
        c.close()


def test_recovery_resumes_after_the_committed_marker(kafka: Tansu) -> None:
    out = new_topic(kafka, 2)
    props = {"bootstrap.servers": kafka.bootstrap}
    sink = EgressSink(props, producer_id=f"p-{out}", marker_partition=0, progress_partitions=1)
    sink.recover([out])
    records = [OutRecord(out, f"k{i}".encode(), b"{}", [], seq=i + 1, part=0) for i in range(6)]
    sink.send(records[:3], Progress(3))
    sink.send(records[3:], Progress(6))
    sink.close()

    again = EgressSink(props, producer_id=f"p-{out}", marker_partition=0, progress_partitions=1)
    try:
        rec = again.recover([out])
        assert (rec.seq, rec.visible) == (6, set())
    finally:
        again.close()


class _Died(BaseException):
    """A producer's process dying inside a transaction: nothing runs after it."""


def test_recovery_waits_for_another_producers_undecided_transaction(kafka: Tansu) -> None:
    """Two sinks share the progress partition (two brokers on one cluster). While B's
    transaction is undecided (B died before its commit), A cannot read its own newest marker
    with read_committed: its recovery must fail (retriable) rather than resume from an older
    marker or none and send its committed records again. Once B is back (its id
    initialized again), A resumes after its newest marker."""
    out = new_topic(kafka, 1)
    props = {"bootstrap.servers": kafka.bootstrap}

    sinks: list[EgressSink] = []

    def sink(name: str, before_commit: Callable[[], None] | None = None) -> EgressSink:
        sinks.append(EgressSink(
            props, producer_id=f"{name}-{out}", marker_partition=0,
            progress_partitions=1, progress_topic=f"progress-{out}", before_commit=before_commit,
        ))  # fmt: skip
        return sinks[-1]

    try:
        _two_sinks(out, sink)
    finally:
        for s in sinks:
            s.close()


def _die() -> None:
    raise _Died


def _two_sinks(out: str, sink: Callable[..., EgressSink]) -> None:
    a, b = sink("a"), sink("b", _die)
    a.recover([out], fresh=True)
    b.recover([out], fresh=True)
    a.send([OutRecord(out, b"a", b"1", [], seq=1, part=0)], Progress(1))

    with pytest.raises(_Died):
        b.send([OutRecord(out, b"b", b"1", [], seq=1, part=0)], Progress(1))
    a.send([OutRecord(out, b"a", b"2", [], seq=2, part=0)], Progress(2))

    again = sink("a")
    with pytest.raises(KafkaError, match="undecided transaction") as err:
        again.recover([out])
    assert err.value.retriable
    # A new producer id has nothing to read, so nothing to wait for.
    assert sink("c").recover([out], fresh=True).seq == 0

    sink("b").recover([out])  # B is back: its transaction is decided
    rec = again.recover([out])
    assert (rec.seq, rec.visible) == (2, set())
