"""Stream handlers declared in the SDK (``@svc.handler(batch=sdk.Batch(...))``): the
declaration reaches the broker as handler metadata at discovery, and a subscription with no
batch options of its own hands the handler batches of up to that many records of one
partition; a subscription's own ``batch_max_records`` overrides it. Outputs leave exactly
once, in per-key order."""

from __future__ import annotations

import asyncio

import pytest

from sluice.broker.server import Broker
from tests.broker.conftest import ServiceProcess
from tests.kafka import Tansu

from .conftest import Admin, Out, check_exactly_once, new_topic, produce, read_output

pytestmark = pytest.mark.kafka

DECLARED = 7  # tests/egress/services.py: Declared/enrich_batch takes batches of up to 7 records


def check_batches(got: list[Out], limit: int) -> None:
    """Each output names its batch (input partition, first offset, size): every batch is
    one partition's consecutive records, at most ``limit`` of them, and full batches occur
    (the records were all produced before the subscription started)."""
    batches: dict[tuple[int, int], list[Out]] = {}
    for o in got:
        batches.setdefault((o.value["partition"], o.value["first"]), []).append(o)
    for (_, first), outs in batches.items():
        size = outs[0].value["size"]
        assert all(o.value["size"] == size for o in outs) and len(outs) == size
        assert size <= limit, f"a batch of {size} records, above {limit}"
        assert sorted(o.value["offset"] for o in outs) == list(range(first, first + size))
        assert {o.headers["batch-topic"] for o in outs} == {outs[0].headers["batch-topic"]}
    assert max(len(outs) for outs in batches.values()) == limit


async def test_a_subscription_without_batch_options_uses_the_declared_batch(
    kafka: Tansu, broker: Broker, admin: Admin, egress_services: ServiceProcess
) -> None:
    await admin.register(egress_services.uri, http1=True)
    await admin.cluster(kafka)
    handlers = (await admin.http.get("/services/Declared")).json()["handlers"]
    assert handlers[0]["metadata"]["sluice.batch.max_records"] == str(DECLARED)

    src, out, out3 = new_topic(kafka, 3), new_topic(kafka, 3), new_topic(kafka, 2)
    n = 600
    want = {i: f"k{i % 13}".encode() for i in range(n)}
    produce(kafka, src, [(want[i].decode(), {"i": i}, None) for i in range(n)])
    sub = await admin.subscribe(src, "service://Declared/enrich_batch", output_topic=out)
    assert "batch_max_records" not in sub["options"]
    # The subscription's own setting wins over the declaration.
    await admin.subscribe(
        src, "service://Declared/enrich_batch", output_topic=out3, batch_max_records=3
    )

    got = await asyncio.to_thread(read_output, kafka, out, n)
    check_exactly_once(got, want)
    check_batches(got, DECLARED)
    assert {o.headers["batch-topic"] for o in got} == {src}
    status = (await admin.http.get(f"/subscriptions/{sub['name']}")).json()["status"]
    assert status["batch_max_records"] == DECLARED

    got3 = await asyncio.to_thread(read_output, kafka, out3, n)
    check_exactly_once(got3, want)
    check_batches(got3, 3)
