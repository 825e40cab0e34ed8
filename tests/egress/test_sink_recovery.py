"""EgressSink recovery reads exactly to the end of each partition, past transaction markers.

A committed transaction leaves a control record after its records in each partition it
wrote; it takes an offset but is never delivered. Recovery must see that a partition is read
to its end by the consumer's position (which moves past control records), not by waiting for
a record that never comes.
"""

from __future__ import annotations

import time

import pytest

from connectors.kafka import Consumer, TopicPartitionOffset, TransactionalProducer
from connectors.kafka._egress import EgressSink, OutRecord
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
    sink.send(records[:3], upto=3)
    sink.send(records[3:], upto=6)
    sink.close()

    again = EgressSink(props, producer_id=f"p-{out}", marker_partition=0, progress_partitions=1)
    try:
        rec = again.recover([out])
        assert (rec.seq, rec.visible) == (6, set())
    finally:
        again.close()
