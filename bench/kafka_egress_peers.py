"""The peers of bench/kafka_egress.py, each a plain script run in its own process:

    python bench/kafka_egress_peers.py ceiling BOOTSTRAP SRC DST N   (the main .venv)
    .venv-quix/bin/python bench/kafka_egress_peers.py quix BOOTSTRAP SRC DST N

``ceiling``: confluent-kafka consume → transactional produce → send_offsets_to_transaction,
up to 1,000 records per transaction. ``quix``: Quix Streams 3.x, processing_guarantee
"exactly-once". Both apply the same map as the Sluice handlers (parse the JSON value, emit
``{"i": ..., "by": ...}`` under the input key) and print ``FIRST <unix time>`` when the
first record is processed. This file is a benchmark peer, not part of Sluice: it imports the
Kafka client directly, as their users would.
"""

from __future__ import annotations

import json
import sys
import time


def ceiling(bootstrap: str, src: str, dst: str, n: int) -> None:
    import confluent_kafka as ck  # lazy: the peer's own dependency

    c = ck.Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"ceiling-{src}",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            "auto.offset.reset": "earliest",
        }
    )
    md = c.list_topics(src, timeout=10)
    c.assign([ck.TopicPartition(src, p, ck.OFFSET_BEGINNING) for p in md.topics[src].partitions])
    p = ck.Producer(
        {"bootstrap.servers": bootstrap, "transactional.id": f"ceiling-{src}", "linger.ms": 5}
    )
    p.init_transactions(30)
    done = 0
    first = None
    while done < n:
        msgs = [m for m in c.consume(1000, 1.0) if m.error() is None]
        if not msgs:
            continue
        if first is None:
            first = time.time()
            print(f"FIRST {first}", flush=True)
        p.begin_transaction()
        for m in msgs:
            v = json.loads(m.value())
            p.produce(dst, json.dumps({"i": v["i"], "by": "ceiling"}).encode(), key=m.key())
        p.send_offsets_to_transaction(c.position(c.assignment()), c.consumer_group_metadata())
        p.commit_transaction(30)
        done += len(msgs)
    print(f"DONE {time.time()}", flush=True)
    c.close()


def quix(bootstrap: str, src: str, dst: str, n: int) -> None:
    from quixstreams import Application  # lazy: runs in .venv-quix only

    app = Application(
        broker_address=bootstrap,
        consumer_group=f"quix-{src}",
        auto_offset_reset="earliest",
        processing_guarantee="exactly-once",
        # Tansu: a group join waits for the rebalance timeout (DESIGN.md).
        consumer_extra_config={"session.timeout.ms": 6000, "max.poll.interval.ms": 10000},
    )
    first: list[float] = []

    def mapper(v: dict[str, int]) -> dict[str, object]:
        if not first:
            first.append(time.time())
            print(f"FIRST {first[0]}", flush=True)
        return {"i": v["i"], "by": "quix"}

    inp = app.topic(src, value_deserializer="json")
    out = app.topic(dst, value_serializer="json")
    sdf = app.dataframe(inp)
    sdf = sdf.apply(mapper)
    sdf.to_topic(out)
    app.run(count=n, timeout=600)
    print(f"DONE {time.time()}", flush=True)


if __name__ == "__main__":
    mode, bootstrap, src, dst, n = sys.argv[1:6]
    {"ceiling": ceiling, "quix": quix}[mode](bootstrap, src, dst, int(n))
