"""Kafka egress: a subscription's results to an output topic (stateless and keyed), the
SDK's ``ctx.kafka_send``, and stream handlers; read back with read_committed."""

from __future__ import annotations

import asyncio

import pytest

from sluice.broker.server import Broker
from tests.broker.conftest import ServiceProcess
from tests.kafka import Tansu

from .conftest import Admin, check_exactly_once, new_topic, produce, read_output

pytestmark = pytest.mark.kafka


async def _setup(admin: Admin, kafka: Tansu, svc: ServiceProcess) -> None:
    await admin.register(svc.uri, http1=True)
    await admin.cluster(kafka)


@pytest.mark.parametrize("sink", ["service://Enrich/map", "service://Tally/add"])
async def test_results_go_to_the_output_topic(
    sink: str, kafka: Tansu, broker: Broker, admin: Admin, egress_services: ServiceProcess
) -> None:
    await _setup(admin, kafka, egress_services)
    src, out = new_topic(kafka, 4), new_topic(kafka, 3)
    n = 300
    want = {i: f"k{i % 17}".encode() for i in range(n)}
    produce(kafka, src, [(want[i].decode(), {"i": i}, None) for i in range(n)])
    await admin.subscribe(src, sink, output_topic=out, output_headers="app=test")
    got = await asyncio.to_thread(read_output, kafka, out, n)
    check_exactly_once(got, want)
    assert all(o.headers["app"] == "test" for o in got)
    if sink.endswith("Tally/add"):
        # the virtual object saw each key's records in order: n counts up per key
        per_key: dict[bytes | None, list[int]] = {}
        for o in sorted(got, key=lambda o: (o.partition, o.offset)):
            per_key.setdefault(o.key, []).append(o.value["n"])
        for counts in per_key.values():
            assert counts == list(range(1, len(counts) + 1))


async def test_kafka_send_from_a_handler(
    kafka: Tansu, broker: Broker, admin: Admin, egress_services: ServiceProcess
) -> None:
    await _setup(admin, kafka, egress_services)
    src, out = new_topic(kafka, 2), new_topic(kafka, 2)
    n = 100
    produce(
        kafka, src, [(f"k{i}", {"i": i, "topic": out, "key": f"k{i % 5}"}, None) for i in range(n)]
    )
    await admin.subscribe(src, "service://Sender/send")
    got = await asyncio.to_thread(read_output, kafka, out, n)
    # Stateless invocations run concurrently: their sends keep the order of completion
    # (sequence numbers still increase per key), not of input.
    check_exactly_once(got, {i: f"k{i % 5}".encode() for i in range(n)}, ordered=False)
    assert all(o.headers["origin"] == "sender" for o in got)


async def test_stream_handler_batches(
    kafka: Tansu, broker: Broker, admin: Admin, egress_services: ServiceProcess
) -> None:
    await _setup(admin, kafka, egress_services)
    src, out = new_topic(kafka, 2), new_topic(kafka, 2)
    n = 2000
    want = {i: f"k{i % 13}".encode() for i in range(n)}
    produce(kafka, src, [(want[i].decode(), {"i": i}, None) for i in range(n)])
    await admin.subscribe(src, "service://Stream/batch", output_topic=out, batch_max_records=100)
    got = await asyncio.to_thread(read_output, kafka, out, n)
    check_exactly_once(got, want)
    assert {o.value["by"] for o in got} == {"stream"}


async def test_restate_sdk_generic_send_to_the_builtin_service(
    kafka: Tansu, broker: Broker, admin: Admin, restate_egress_services: ServiceProcess
) -> None:
    await admin.register(restate_egress_services.uri)
    await admin.cluster(kafka)
    src, out = new_topic(kafka, 2), new_topic(kafka, 2)
    n = 50
    produce(
        kafka, src, [(f"k{i}", {"i": i, "topic": out, "key": f"k{i % 3}"}, None) for i in range(n)]
    )
    await admin.subscribe(src, "service://RestateSender/send")
    got = await asyncio.to_thread(read_output, kafka, out, n)
    check_exactly_once(got, {i: f"k{i % 3}".encode() for i in range(n)}, ordered=False)


async def test_egress_to_another_cluster(
    kafka: Tansu, broker: Broker, admin: Admin, egress_services: ServiceProcess
) -> None:
    """The source is one Kafka cluster, the output topic lives on another (a second Tansu)."""
    await _setup(admin, kafka, egress_services)
    remote = Tansu()
    remote.start()
    try:
        await admin.cluster(remote, name="remote")
        src, out = new_topic(kafka, 2), new_topic(remote, 2)
        n = 100
        want = {i: f"k{i % 7}".encode() for i in range(n)}
        produce(kafka, src, [(want[i].decode(), {"i": i}, None) for i in range(n)])
        await admin.subscribe(
            src, "service://Enrich/map", output_topic=out, output_cluster="remote"
        )
        got = await asyncio.to_thread(read_output, remote, out, n)
        check_exactly_once(got, want)
    finally:
        remote.stop()
