"""Records of a topic become invocations of a counter virtual object, exactly once, in
per-key offset order; offsets and metrics follow."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from sluice.broker.server import Broker
from sluice.connectors.kafka import Consumer, Producer, TopicPartitionOffset
from tests.broker.conftest import ServiceProcess
from tests.kafka import Tansu

from .conftest import Admin, new_topic, produce

pytestmark = pytest.mark.kafka


@pytest.mark.parametrize("sdk_name", ["restate", "sluice"])
async def test_counter_ingest_counts_each_record_once_in_key_order(
    sdk_name: str,
    kafka: Tansu,
    broker: Broker,
    admin: Admin,
    request: pytest.FixtureRequest,
) -> None:
    """2,000 records of 40 keys: each counted once, in offset order per key, with metrics and
    committed offsets to match. No fault here: tests/ingress_kafka/test_crash.py kills the
    broker under the same kind of load."""
    svc: ServiceProcess = request.getfixturevalue(f"{sdk_name}_counter")
    topic = new_topic(kafka)
    keys = [f"k{i}" for i in range(40)]
    records = [(keys[i % len(keys)], {"v": i}, None) for i in range(2000)]
    produce(kafka, topic, records)
    await admin.register(svc.uri)  # HTTP/2 bidi streaming, as a deployment registers by default
    await admin.cluster(kafka)
    t0 = time.monotonic()
    sub = await admin.subscribe(topic, "service://KafkaCounter/add", name=f"counter-{sdk_name}")
    assert sub["id"].startswith("sub_")
    want = {k: 0 for k in keys}
    sums = {k: 0 for k in keys}
    for k, v, _ in records:
        want[k] += 1
        sums[k] += v["v"]
    states = await admin.wait_counts(keys, want)
    print(f"{sdk_name}: 2000 records in {time.monotonic() - t0:.2f}s")
    for k in keys:
        assert states[k]["count"] == want[k], k
        assert states[k]["sum"] == sums[k], k
        assert states[k].get("out_of_order", 0) == 0, k

    # Metrics: everything ingested, no lag, no dead letters; the offsets went back to Kafka.
    r = await admin.http.get(f"/subscriptions/{sub['id']}")
    status = r.json()["status"]
    assert sum(p["ingested"] for p in status["partitions"]) == 2000
    name = f"counter-{sdk_name}"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        text = (await admin.http.get("/metrics")).text
        lags = [
            ln
            for ln in text.splitlines()
            if ln.startswith("sluice_kafka_consumer_lag{") and f'subscription="{name}"' in ln
        ]
        if len(lags) == 4 and all(ln.endswith(" 0") for ln in lags):
            break
        await asyncio.sleep(0.2)
    assert "sluice_kafka_records_ingested_total" in text
    assert len(lags) == 4 and all(ln.endswith(" 0") for ln in lags), lags

    # The offsets went back to Kafka (under the subscription's group id) once durable: they
    # equal each partition's position in the log.
    positions = {p["partition"]: p["position"] for p in status["partitions"]}
    c = Consumer({"bootstrap.servers": kafka.bootstrap, "group.id": f"sluice-{name}"})
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            tps = [TopicPartitionOffset(topic, n) for n in range(4)]
            committed = await asyncio.to_thread(c.committed, tps)
            if committed == positions:
                break
            await asyncio.sleep(0.2)
    finally:
        c.close()
    assert committed == positions and sum(positions.values()) == 2000


async def test_backpressure_bounds_invocations_in_flight(
    kafka: Tansu, broker: Broker, admin: Admin, restate_counter: ServiceProcess
) -> None:
    topic = new_topic(kafka, 2)
    produce(kafka, topic, [(f"s{i % 8}", {"v": 1}, i % 2) for i in range(48)])
    await admin.register(restate_counter.uri)
    await admin.cluster(kafka)
    sub = await admin.subscribe(topic, "service://KafkaCounter/slow", name="slow", max_in_flight=4)
    keys = [f"s{k}" for k in range(8)]
    states = await admin.wait_counts(keys, dict.fromkeys(keys, 6), within=30)
    assert sum(s.get("count", 0) for s in states.values()) == 48, states
    status = (await admin.http.get(f"/subscriptions/{sub['id']}")).json()["status"]
    # The consumer never had more invocations open than the configured room (4) allowed:
    # the most it ever had, as it counts them, not a sample.
    assert 1 <= status["peak_in_flight"] <= 4, status


async def test_headers_key_and_input_reach_the_handler(
    kafka: Tansu, broker: Broker, admin: Admin, restate_counter: ServiceProcess
) -> None:
    topic = new_topic(kafka, 1)
    p = Producer({"bootstrap.servers": kafka.bootstrap})
    p.produce(topic, b'{"x": [1, 2]}', key=b"h1", headers=[("trace-id", b"abc"), ("bin", b"\xff")])
    p.flush()
    await admin.register(restate_counter.uri)
    await admin.cluster(kafka)
    await admin.subscribe(topic, "service://KafkaCounter/remember", name=f"h-{topic}")
    deadline = time.monotonic() + 15
    state: dict[str, Any] = {}
    while "headers" not in state and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        state = await admin.state("KafkaCounter", "h1")
    assert state["input"] == {"x": [1, 2]}
    h = state["headers"]
    # The record's own headers (non-UTF-8 values in the key encoding) beside Kafka's metadata.
    assert h["trace-id"] == "abc" and h["bin"] == "b64:/w=="
    assert (h["kafka.topic"], h["kafka.partition"], h["kafka.offset"], h["kafka.key"]) == (
        topic,
        "0",
        "0",
        "h1",
    )
    assert int(h["kafka.timestamp"]) > 1_600_000_000_000


async def test_service_handler_and_raw_serde(
    kafka: Tansu, broker: Broker, admin: Admin, restate_counter: ServiceProcess
) -> None:
    topic = new_topic(kafka, 2)
    # Null keys are fine for a plain service handler.
    produce(kafka, topic, [(None, {"to": f"svc{i % 3}", "v": i}, i % 2) for i in range(30)])
    raw_topic = new_topic(kafka, 1)
    produce(kafka, raw_topic, [(None, b"\x00\x01not json", 0)])
    await admin.register(restate_counter.uri)
    await admin.cluster(kafka)
    await admin.subscribe(topic, "service://KafkaEcho/forward", name=f"svc-{topic}")
    await admin.subscribe(raw_topic, "service://KafkaEcho/raw", name=f"raw-{topic}", serde="raw")
    want = {f"svc{k}": (10, sum(i for i in range(30) if i % 3 == k)) for k in range(3)}
    states = await admin.wait_counts(list(want), {k: c for k, (c, _) in want.items()}, within=20)
    assert {k: (s.get("count"), s.get("sum")) for k, s in states.items()} == want
    deadline = time.monotonic() + 10
    state: dict[str, Any] = {}
    while "input" not in state and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        state = await admin.state("KafkaCounter", "raw")
    assert state.get("input") == b"\x00\x01not json".hex()
