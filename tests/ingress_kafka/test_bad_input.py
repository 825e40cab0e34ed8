"""Bad input never stalls a partition and is never silently dropped (invariant 6): each bad
record goes to the dead-letter topic with headers saying why, or, without one, becomes a
failed invocation listed by the admin API; the good records around it are all applied."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest

from sluice.connectors.kafka import Consumer, KafkaMessage, TopicPartitionOffset
from sluice.connectors.kafka._client import OFFSET_BEGINNING
from tests.broker.conftest import BrokerProcess, ServiceProcess
from tests.kafka import Tansu
from tests.quiet import until_quiet

from .conftest import Admin, deploy_with_kafka, new_topic, produce

pytestmark = pytest.mark.kafka

BIG = b'{"v": 1, "pad": "' + b"x" * 2_000_000 + b'"}'
# (key, value, why it is bad or None); one partition, so "kept moving" means "in order".
RECORDS: list[tuple[bytes | None, bytes, str | None]] = [
    (b"k1", b'{"v": 1}', None),
    (b"\xff\xfe-not-utf8", b'{"v": 100}', "key is not UTF-8"),
    (b"k1", b'{"v": 2}', None),
    (None, b'{"v": 100}', "null key"),
    (b"k1", b'{"v": 3}', None),
    (b"k1", b'{"v": oops', "not valid JSON"),
    (b"k1", b'{"v": 4}', None),
    (b"k1", BIG, "exceeds max_record_bytes"),
    (b"k1", b'{"v": 5}', None),
    (b"k1", b'{"v": 100, "fail": true}', "handler failed terminally: [422] refused record 100"),
    (b"k1", b'{"v": 6}', None),
]
BAD = [(i, why) for i, (_, _, why) in enumerate(RECORDS) if why]


def _read_all(kafka: Tansu, topic: str, n: int, within: float = 20) -> list[KafkaMessage]:
    c = Consumer({"bootstrap.servers": kafka.bootstrap, "group.id": "dlq-reader"})
    try:
        c.assign([TopicPartitionOffset(topic, 0, OFFSET_BEGINNING)])
        out: list[KafkaMessage] = []
        deadline = time.monotonic() + within
        while len(out) < n and time.monotonic() < deadline:
            out += c.consume(100, 0.2)
        return out
    finally:
        c.close()


async def _setup(
    kafka: Tansu, admin: Admin, restate_uri: str, **options: object
) -> tuple[str, str]:
    topic = new_topic(kafka, 1)
    produce(
        kafka,
        topic,
        [(k, v, 0) for k, v, _ in RECORDS],
        **{"message.max.bytes": 4_000_000},
    )
    await admin.register(restate_uri)
    await admin.cluster(kafka)
    sub = await admin.subscribe(
        topic, "service://KafkaCounter/add", name=f"bad-{topic}", key_encoding="strict", **options
    )
    return topic, sub["id"]


async def _wait_count(admin: Admin, key: str, n: int) -> dict[str, int]:
    deadline = time.monotonic() + 30
    state: dict[str, int] = {}
    while time.monotonic() < deadline:
        state = await admin.state("KafkaCounter", key)
        if state.get("count", 0) >= n:
            break
        await asyncio.sleep(0.1)
    return state


async def test_bad_records_go_to_the_dead_letter_topic_with_reasons(
    kafka: Tansu, admin: Admin, restate_counter: object
) -> None:
    dlq = new_topic(kafka, 1)
    topic, sub_id = await _setup(kafka, admin, restate_counter.uri, dead_letter_topic=dlq)  # type: ignore[attr-defined]
    state = await _wait_count(admin, "k1", 6)
    # Every good record, including those after each bad one, was applied once, in order.
    assert state["count"] == 6 and state["sum"] == 21 and state.get("out_of_order", 0) == 0

    dead = await asyncio.to_thread(_read_all, kafka, dlq, len(BAD))
    assert len(dead) == len(BAD), [d.headers for d in dead]
    by_offset = {}
    for m in dead:
        h = {k: (v or b"").decode() for k, v in m.headers}
        assert h["sluice-dlq-subscription"] == f"bad-{topic}"
        assert h["sluice-dlq-topic"] == topic
        assert h["sluice-dlq-partition"] == "0"
        by_offset[int(h["sluice-dlq-offset"])] = (m, h)
    assert sorted(by_offset) == [i for i, _ in BAD]
    for i, why in BAD:
        m, h = by_offset[i]
        assert why in h["sluice-dlq-reason"], (i, h["sluice-dlq-reason"])
        # The original key and value travel with it, byte for byte.
        assert m.key == RECORDS[i][0]
        assert m.value == RECORDS[i][1]
    _, h = by_offset[9]
    assert h["sluice-dlq-invocation-id"].startswith("inv_1")

    # Metrics: all 11 ingested, 5 dead-lettered, no lag.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        parts = (await admin.http.get(f"/subscriptions/{sub_id}")).json()["status"]["partitions"]
        if parts[0]["dead_lettered"] == len(BAD):
            break
        await asyncio.sleep(0.1)
    assert parts[0]["ingested"] == len(RECORDS)
    assert parts[0]["dead_lettered"] == len(BAD)
    assert parts[0]["lag"] == 0
    text = (await admin.http.get("/metrics")).text
    labels = f'subscription="bad-{topic}",topic="{topic}",partition="0"'
    assert f"sluice_kafka_records_dead_lettered_total{{{labels}}} 5" in text


async def test_without_a_dead_letter_topic_bad_records_are_failed_invocations(
    kafka: Tansu, admin: Admin, restate_counter: object
) -> None:
    await _setup(kafka, admin, restate_counter.uri)  # type: ignore[attr-defined]
    state = await _wait_count(admin, "k1", 6)
    assert state["count"] == 6 and state["sum"] == 21
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        rows = (await admin.http.get("/invocations?status=completed")).json()["invocations"]
        failed = [r for r in rows if r["last_failure"]]
        if len(failed) >= len(BAD):
            break
        await asyncio.sleep(0.1)
    assert len(failed) == len(BAD), rows
    assert all(r["service"] == "KafkaCounter" for r in failed)
    reasons = " | ".join(r["last_failure"] for r in failed)
    for _, why in BAD:
        assert why.removeprefix("handler failed terminally: ") in reasons, (why, reasons)


async def test_non_utf8_key_is_encoded_by_default(
    kafka: Tansu, admin: Admin, restate_counter: object
) -> None:
    topic = new_topic(kafka, 1)
    produce(kafka, topic, [(b"\xff\x00", b'{"v": 7}', 0), ("b64:x", b'{"v": 8}', 0)])
    await admin.register(restate_counter.uri)  # type: ignore[attr-defined]
    await admin.cluster(kafka)
    await admin.subscribe(topic, "service://KafkaCounter/add", name=f"keys-{topic}")
    # Not UTF-8 (and UTF-8 that starts with the prefix): "b64:" + base64 of the bytes.
    assert (await _wait_count(admin, "b64:/wA=", 1)) == {"count": 1, "sum": 7, "last": 0}
    assert (await _wait_count(admin, "b64:YjY0Ong=", 1)) == {"count": 1, "sum": 8, "last": 1}


async def test_dead_letters_outlive_their_deleted_subscription(
    kafka: Tansu, tmp_path: Path, restate_counter: ServiceProcess
) -> None:
    """Dead letters decided while the cluster refused them (an injected fault) are still
    delivered, after a restart, once their subscription is deleted: a decided dead letter is
    accepted data. The broker is quiet at the end: no row is left behind."""
    topic, dlq = new_topic(kafka, 1), new_topic(kafka, 1)
    produce(
        kafka, topic, [(k, v, 0) for k, v, _ in RECORDS[:8]], **{"message.max.bytes": 4_000_000}
    )
    bad = [i for i, why in BAD if i < 8 and "handler" not in why]
    proc = BrokerProcess(tmp_path / "data")
    proc.start({"SLUICE_FAULTS": "dead-letter-produce=1"})
    try:
        admin = f"http://127.0.0.1:{proc.admin}"
        async with httpx.AsyncClient(base_url=admin, timeout=30) as c:
            await deploy_with_kafka(c, admin, restate_counter.uri, kafka)
            r = await c.post(
                "/subscriptions",
                json={
                    "source": f"kafka://local/{topic}",
                    "sink": "service://KafkaCounter/add",
                    "options": {
                        "name": "doomed",
                        "dead_letter_topic": dlq,
                        "key_encoding": "strict",
                    },
                },
            )
            assert r.status_code == 201, r.text
            # Every row decided, and a delivery tried and refused (the sender runs apart).
            deadline = time.monotonic() + 60
            while True:
                rows = (await c.get("/activity")).json()["dead_letters"]
                tried = "injected at dead-letter-produce" in proc.log.read_text(errors="replace")
                if rows >= len(bad) and tried:
                    break
                assert time.monotonic() < deadline, (rows, tried)
                await asyncio.sleep(0.1)
            r = await c.delete("/subscriptions/doomed")
            assert r.status_code in (200, 202, 204), r.text
        assert "injected at dead-letter-produce" in proc.stop()
        await asyncio.to_thread(proc.start)
        dead = await asyncio.to_thread(_read_all, kafka, dlq, len(bad), 30)
        offsets = sorted({int(dict(m.headers)["sluice-dlq-offset"] or b"-1") for m in dead})
        assert offsets == bad, [m.headers for m in dead]
        await until_quiet([proc.admin])
    finally:
        proc.stop()
