"""Positions that are not in the partition's log (issue 10): a topic deleted and created again
under a subscription is found, reported and read from its start (or stops the subscription,
as configured), never skipped in silence.

On Tansu (the test broker) a fetch past the log end answers no records and a high watermark
below the position, where Apache Kafka answers OFFSET_OUT_OF_RANGE; topic ids change on
recreation on both. A retention gap (a position below the log start) cannot be made on
Tansu, which cannot delete records (DESIGN.md): its handling is not exercised here. Nor is a
topic recreated under a running subscription: on Tansu, deleting a topic that a consumer
reads crashes the consumer's process inside librdkafka (reliability test 1 shows it), so
the recreation is made while the broker is down.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from sluice.connectors.kafka import TopicAdmin
from sluice.ingress.kafka._consumer import outside_log
from tests.broker.conftest import ServiceProcess
from tests.conftest import running_broker
from tests.kafka import Tansu

from .conftest import Admin, new_topic, produce

pytestmark = pytest.mark.kafka

KEYS = [f"k{i}" for i in range(10)]


def _records(n: int, base: int) -> list[tuple[str, dict[str, int], int]]:
    return [(KEYS[i % len(KEYS)], {"v": base + i}, 0) for i in range(n)]


def _want(*batches: list[tuple[str, dict[str, int], int]]) -> tuple[dict[str, int], dict[str, int]]:
    counts = dict.fromkeys(KEYS, 0)
    sums = dict.fromkeys(KEYS, 0)
    for batch in batches:
        for k, v, _ in batch:
            counts[k] += 1
            sums[k] += v["v"]
    return counts, sums


def _recreate(kafka: Tansu, topic: str) -> None:
    admin = TopicAdmin({"bootstrap.servers": kafka.bootstrap})
    admin.delete_topic(topic)
    deadline = time.monotonic() + 10
    while topic in admin.topics() and time.monotonic() < deadline:
        time.sleep(0.1)
    kafka.create_topic(topic, 1)


async def _status(admin: Admin, name: str) -> dict[str, Any]:
    r = await admin.http.get(f"/subscriptions/{name}")
    assert r.status_code == 200, r.text
    return r.json()["status"]  # type: ignore[no-any-return]


async def _check(admin: Admin, counts: dict[str, int], sums: dict[str, int]) -> None:
    states = await admin.wait_counts(KEYS, counts)
    got = {k: (s.get("count", 0), s.get("sum", 0)) for k, s in states.items()}
    assert got == {k: (counts[k], sums[k]) for k in KEYS}


async def _first_topic(
    admin: Admin, kafka: Tansu, svc: ServiceProcess, name: str, **options: Any
) -> tuple[str, list[tuple[str, dict[str, int], int]]]:
    topic = new_topic(kafka, 1)
    old = _records(100, 0)
    produce(kafka, topic, old)
    await admin.register(svc.uri)
    await admin.cluster(kafka)
    await admin.subscribe(topic, "service://KafkaCounter/add", name=name, **options)
    await _check(admin, *_want(old))
    return topic, old


@pytest.mark.parametrize("new_records", [50, 150])
async def test_a_topic_recreated_while_the_broker_is_down_is_read_from_its_start(
    new_records: int, kafka: Tansu, tmp_path: Path, restate_counter: ServiceProcess
) -> None:
    """The reproduction of issue 10: 100 records ingested, the broker stopped, the topic
    deleted and created again with 50 records, the broker started. With 150 (more than the
    old position), only the topic's id tells the new topic from the old one."""
    data = tmp_path / "d"
    async with running_broker(data) as b:
        admin = Admin(b.admin_port)
        try:
            topic, old = await _first_topic(admin, kafka, restate_counter, "recreated")
        finally:
            await admin.close()
    await asyncio.to_thread(_recreate, kafka, topic)
    new = _records(new_records, 1000)
    produce(kafka, topic, new)
    async with running_broker(data) as b:
        admin = Admin(b.admin_port)
        try:
            await _check(admin, *_want(old, new))
            (part,) = (await _status(admin, "recreated"))["partitions"]
            assert (part["resets"], part["epoch"], part["position"]) == (1, 1, new_records), part
            metrics = (await admin.http.get("/metrics")).text
            assert 'sluice_kafka_topic_resets_total{subscription="recreated"' in metrics
        finally:
            await admin.close()


async def test_on_topic_reset_stop_waits_for_an_operator(
    kafka: Tansu, tmp_path: Path, restate_counter: ServiceProcess
) -> None:
    """``on_topic_reset=stop``: the subscription stops and says why; nothing of the new
    topic is read until it is resumed, and then all of it."""
    data = tmp_path / "d"
    async with running_broker(data) as b:
        admin = Admin(b.admin_port)
        try:
            topic, old = await _first_topic(
                admin, kafka, restate_counter, "careful", on_topic_reset="stop"
            )
        finally:
            await admin.close()
    await asyncio.to_thread(_recreate, kafka, topic)
    new = _records(50, 1000)
    produce(kafka, topic, new)
    async with running_broker(data) as b:
        admin = Admin(b.admin_port)
        try:
            deadline = time.monotonic() + 30
            while not (status := await _status(admin, "careful"))["state"].startswith("stopped"):
                assert time.monotonic() < deadline, status
                await asyncio.sleep(0.1)
            assert "recreated" in status["state"], status
            (part,) = status["partitions"]
            assert part["epoch"] == 0 and part["ingested"] == 0, part
            await _check(admin, *_want(old))  # (quiet, and nothing new counted)
            r = await admin.http.post("/subscriptions/careful/resume")
            assert r.status_code == 200, r.text
            await _check(admin, *_want(old, new))
            (part,) = (await _status(admin, "careful"))["partitions"]
            assert (part["resets"], part["epoch"]) == (1, 1), part
        finally:
            await admin.close()


def test_a_position_outside_the_log_is_a_counted_gap_or_a_recreated_topic() -> None:
    """The pure decision behind an out-of-range position (a retention gap cannot be made on
    Tansu: reliability test 1, test_tansu_cannot_add_partitions): below the log start, the
    records between are counted as skipped and reading goes on at the start; at or past
    the end, the topic was created again. Nothing is ever neither."""
    assert outside_log(at=10, lo=25, hi=40) == (15, "")
    assert outside_log(at=0, lo=1, hi=1) == (1, "")
    skipped, why = outside_log(at=150, lo=0, hi=50)
    assert skipped == 0 and why == "its end 50 is below the position 150"
    for at, lo, hi in [(5, 5, 5), (7, 0, 7), (0, 0, 0)]:
        assert outside_log(at, lo, hi)[1], (at, lo, hi)
