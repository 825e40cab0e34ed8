"""Avro on the way out: records come in as JSON, the handler's results (and ``ctx.kafka_send``
values) leave as Avro in the Schema Registry wire format, with a schema from the file registry
or from a Schema Registry over HTTP (the small local server of tests/connectors). A result
that does not fit the schema goes to the dead-letter topic with the reason in its headers
(or, with no dead-letter topic, becomes a failed invocation); the records around it still
leave exactly once, also when the broker dies inside the egress transaction that skipped it.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from sluice.broker.server import Broker
from sluice.connectors.serde import FileSchemaRegistry, HttpSchemaRegistry, SchemaRegistry
from tests.broker.conftest import BrokerProcess, ServiceProcess, free_port
from tests.connectors.registry_server import RegistryServer
from tests.kafka import Tansu

from .conftest import (
    Admin,
    Out,
    avro_reader,
    check_exactly_once,
    new_topic,
    produce,
    read_output,
)

pytestmark = pytest.mark.kafka

SCHEMA = {
    "type": "record",
    "name": "Enriched",
    "namespace": "sluice.test",
    "fields": [{"name": "i", "type": "long"}, {"name": "by", "type": "string"}],
}


def _inputs(n: int, bad_every: int) -> tuple[dict[int, bytes], set[int], list[Any]]:
    keys = {i: f"k{i % 11}".encode() for i in range(n)}
    bad = {i for i in range(n) if i % bad_every == 7}
    # A misfit: "by" is a number where the schema says string.
    records = [
        (keys[i].decode(), {"i": i, "by": 7 if i in bad else f"b{i}"}, None) for i in range(n)
    ]
    return keys, bad, records


def check_dead_letters(
    dead: list[Out], bad: set[int], keys: dict[int, bytes], *, sub: str, src: str, out: str
) -> None:
    """Each misfit in the dead-letter topic (at least once, like every dead letter), with
    its key, its value as the handler returned it, and headers that say why."""
    assert {d.value["i"] for d in dead} == bad
    for d in dead:
        i, h = d.value["i"], d.headers
        assert d.value == {"i": i, "by": 7} and d.key == keys[i]
        assert h["sluice-dlq-subscription"] == sub
        assert h["sluice-dlq-topic"] == src and h["sluice-dlq-output-topic"] == out
        assert int(h["sluice-dlq-offset"]) >= 0 and h["sluice-dlq-partition"].isdigit()
        reason = h["sluice-dlq-reason"]
        assert "does not match" in reason and "by is 7" in reason, reason


async def test_results_leave_as_avro_and_misfits_are_dead_lettered(
    avro_registry: tuple[str, SchemaRegistry],
    kafka: Tansu,
    broker: Broker,
    admin: Admin,
    egress_services: ServiceProcess,
) -> None:
    address, reg = avro_registry
    await admin.register(egress_services.uri, http1=True)
    await admin.cluster(kafka, schema_registry=address)
    src, out, dlq = new_topic(kafka, 3), new_topic(kafka, 3), new_topic(kafka, 1)
    n = 300
    keys, bad, records = _inputs(n, 25)
    produce(kafka, src, records)
    sub = await admin.subscribe(
        src,
        "service://Enrich/echo",
        name=f"avro-{src}",
        output_topic=out,
        output_serde="avro",
        output_schema=json.dumps(SCHEMA),
        dead_letter_topic=dlq,
    )
    assert sub["options"]["output_serde"] == "avro"

    ids: set[int] = set()
    decode = avro_reader(reg, f"{out}-value", ids)
    got = await asyncio.to_thread(read_output, kafka, out, n - len(bad), decode=decode)
    check_exactly_once(got, {i: k for i, k in keys.items() if i not in bad})
    assert all(o.value == {"i": o.value["i"], "by": f"b{o.value['i']}"} for o in got)
    # Registered under the output topic's subject, and written with that id.
    assert ids == {reg.latest(f"{out}-value")[0]}

    dead = await asyncio.to_thread(read_output, kafka, dlq, len(bad), 30)
    check_dead_letters(dead, bad, keys, sub=f"avro-{src}", src=src, out=out)
    sinks = (await admin.http.get("/egress")).json()["sinks"]
    assert sum(s["records_failed"] for s in sinks) == len(bad)


async def test_kafka_send_avro_by_subject_and_misfits_fail_the_send(
    kafka: Tansu, broker: Broker, admin: Admin, egress_services: ServiceProcess, tmp_path: Path
) -> None:
    """``ctx.kafka_send(..., avro_schema=SUBJECT)``: the subject's latest schema in the
    cluster's registry. With no dead-letter topic a misfit is a failed invocation of
    ``sluice.Kafka/egress`` that says why."""
    reg = FileSchemaRegistry(tmp_path / "registry.json")
    await admin.register(egress_services.uri, http1=True)
    await admin.cluster(kafka, schema_registry=f"file://{tmp_path / 'registry.json'}")
    src, out = new_topic(kafka, 2), new_topic(kafka, 2)
    schema_id = reg.register("enriched", SCHEMA)
    n = 60
    bad = {i for i in range(n) if i % 20 == 7}
    produce(
        kafka,
        src,
        [
            (
                f"k{i}",
                {
                    "topic": out,
                    "key": f"k{i % 5}",
                    "subject": "enriched",
                    "value": {"i": i} if i in bad else {"i": i, "by": "sender"},
                },
                None,
            )
            for i in range(n)
        ],
    )
    await admin.subscribe(src, "service://Sender/send_avro")
    ids: set[int] = set()
    got = await asyncio.to_thread(
        read_output, kafka, out, n - len(bad), decode=avro_reader(reg, "enriched", ids)
    )
    want = {i: f"k{i % 5}".encode() for i in range(n) if i not in bad}
    check_exactly_once(got, want, ordered=False)
    assert ids == {schema_id}

    deadline = time.monotonic() + 20
    failed: list[dict[str, Any]] = []
    while time.monotonic() < deadline and len(failed) < len(bad):
        rows = (await admin.http.get("/invocations?status=completed")).json()["invocations"]
        failed = [r for r in rows if r["service"] == "sluice.Kafka" and r["last_failure"]]
        await asyncio.sleep(0.2)
    assert len(failed) == len(bad), failed
    for r in failed:
        assert r["handler"] == "egress"
        assert "does not match subject 'enriched'" in r["last_failure"], r
        assert "by" in r["last_failure"] and out in r["last_failure"], r


async def test_bad_avro_settings_are_refused(
    kafka: Tansu, broker: Broker, admin: Admin, egress_services: ServiceProcess, tmp_path: Path
) -> None:
    await admin.register(egress_services.uri, http1=True)
    await admin.cluster(kafka)  # no schema registry
    src, out = new_topic(kafka, 1), new_topic(kafka, 1)

    async def create(**options: str) -> httpx.Response:
        body = {"source": f"kafka://local/{src}", "sink": "service://Enrich/echo"}
        return await admin.http.post("/subscriptions", json={**body, "options": options})

    r = await create(output_topic=out, output_serde="avro")
    assert r.status_code == 400 and "needs a schema registry" in r.json()["message"], r.text
    reg = str(tmp_path / "r.json")
    r = await create(output_topic=out, output_serde="avro", schema_registry=reg, output_schema="{")
    assert r.status_code == 400 and "output_schema" in r.json()["message"], r.text
    r = await create(
        output_topic=out,
        output_serde="avro",
        schema_registry=reg,
        output_schema=json.dumps({"type": "record", "name": "X", "fields": [{"name": "a"}]}),
    )
    assert r.status_code == 400 and "not a valid Avro schema" in r.json()["message"], r.text
    r = await create(output_topic=out, output_serde="avro", output_schema=str(tmp_path / "no.avsc"))
    assert r.status_code == 400 and "no.avsc" in r.json()["message"], r.text
    r = await create(output_serde="avro", schema_registry=reg)
    assert r.status_code == 400 and "needs an output_topic" in r.json()["message"], r.text
    r = await create(output_topic=out, output_serde="avro", schema_registry="ftp://x")
    assert r.status_code == 400 and "schema_registry" in r.json()["message"], r.text


async def _settled(c: httpx.AsyncClient, name: str, n: int, within: float = 60) -> None:
    """Until the subscription ingested ``n`` records and has no invocation open."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        status = (await c.get(f"/subscriptions/{name}")).json().get("status", {})
        ingested = sum(p["ingested"] for p in status.get("partitions", []))
        if ingested == n and status.get("in_flight") == 0:
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"subscription {name} did not settle: {status}")


@pytest.mark.timeout(240)
@pytest.mark.parametrize("point", ["before-egress-commit", "after-egress-commit"])
async def test_death_around_the_commit_of_the_transaction_that_skipped_misfits(
    point: str, kafka: Tansu, tmp_path: Path, egress_services: ServiceProcess
) -> None:
    """The registry is down at first: every result waits in the outbox (nothing is
    dead-lettered for it). Then the registry comes up and the broker is SIGKILLed in its
    first egress transaction, which holds every result: before its commit (on Tansu the
    transaction becomes visible on restart) or after it. Either way its rows count as sent
    on restart, and their misfits, dead-lettered by the trim that never happened, must be
    found again."""
    src, out, dlq = new_topic(kafka, 2), new_topic(kafka, 2), new_topic(kafka, 1)
    n = 400
    keys, bad, records = _inputs(n, 20)
    produce(kafka, src, records)
    port = free_port()
    proc = BrokerProcess(tmp_path / "data")
    proc.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{proc.admin}", timeout=30) as c:
            r = await c.post("/deployments", json={"uri": egress_services.uri, "use_http_11": True})
            assert r.status_code == 201, r.text
            r = await c.post(
                "/kafka-clusters",
                json={
                    "name": "local",
                    "properties": {"bootstrap.servers": kafka.bootstrap},
                    "schema_registry": f"http://127.0.0.1:{port}",
                },
            )
            assert r.status_code == 201, r.text
            options = {
                "name": "avro-crash",
                "output_topic": out,
                "output_serde": "avro",
                "output_schema": json.dumps(SCHEMA),
                "dead_letter_topic": dlq,
            }
            r = await c.post(
                "/subscriptions",
                json={
                    "source": f"kafka://local/{src}",
                    "sink": "service://Enrich/echo",
                    "options": options,
                },
            )
            assert r.status_code == 201, r.text
            await _settled(c, "avro-crash", n)
            # The sink says why it waits (between retries it recovers its producer again).
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                sinks = (await c.get("/egress")).json()["sinks"]
                if "unreachable" in sinks[0]["state"]:
                    break
                await asyncio.sleep(0.1)
            assert "unreachable" in sinks[0]["state"], sinks
            assert [s["records_sent"] for s in sinks] == [0], sinks
        proc.kill()
        with RegistryServer(port) as server:
            proc.start({"SLUICE_FAULTS": f"{point}=1"})
            assert proc.proc is not None
            await asyncio.to_thread(proc.proc.wait, 120)  # it kills itself at the point
            await asyncio.to_thread(proc.start)
            reg = HttpSchemaRegistry(server.url)
            got = await asyncio.to_thread(
                read_output,
                kafka,
                out,
                n - len(bad),
                decode=avro_reader(reg, f"{out}-value", set()),
            )
            check_exactly_once(got, {i: k for i, k in keys.items() if i not in bad})
            dead = await asyncio.to_thread(read_output, kafka, dlq, len(bad), 30)
            check_dead_letters(dead, bad, keys, sub="avro-crash", src=src, out=out)
    finally:
        proc.stop()
    log = proc.log.read_text(errors="replace")
    assert "Traceback" not in log, log[-3000:]
    assert f"{len(bad)} records of rows committed before a restart did not fit" in log, log[-3000:]


@pytest.mark.timeout(240)
async def test_misfits_of_a_committed_transaction_stay_dead_letters_when_the_subject_changes(
    kafka: Tansu, tmp_path: Path, egress_services: ServiceProcess
) -> None:
    """The broker dies right after committing its first egress transaction, which left out
    misfits (the subscription encodes with the registry subject's latest version). Before the
    restart, a new version of the subject makes them fit. The rows of that transaction are
    committed: the restart must dead-letter its misfits as the marker names them, not encode
    them again with the new version (which would drop them: neither sent nor dead-lettered).
    Every input ends once in the output or among the dead letters, never both."""
    src, out, dlq = new_topic(kafka, 1), new_topic(kafka, 1), new_topic(kafka, 1)
    n = 200
    keys = {i: f"k{i % 11}".encode() for i in range(n)}
    # (The first record is a misfit: the first transaction holds the first row of its lane.)
    records = [
        (keys[i].decode(), {"i": i, "by": 7 if i % 10 == 0 else f"b{i}"}, None) for i in range(n)
    ]
    subject = f"{out}-value"
    with RegistryServer() as server:
        reg = HttpSchemaRegistry(server.url)
        reg.register(subject, SCHEMA)
        proc = BrokerProcess(tmp_path / "data")
        proc.start({"SLUICE_FAULTS": "after-egress-commit=1"})
        try:
            async with httpx.AsyncClient(
                base_url=f"http://127.0.0.1:{proc.admin}", timeout=30
            ) as c:
                r = await c.post(
                    "/deployments", json={"uri": egress_services.uri, "use_http_11": True}
                )
                assert r.status_code == 201, r.text
                cluster = {"bootstrap.servers": kafka.bootstrap}
                r = await c.post(
                    "/kafka-clusters",
                    json={"name": "local", "properties": cluster, "schema_registry": server.url},
                )
                assert r.status_code == 201, r.text
                options = {
                    "name": "avro-subject",
                    "output_topic": out,
                    "output_serde": "avro",
                    "output_schema": subject,
                    "dead_letter_topic": dlq,
                }
                body = {"source": f"kafka://local/{src}", "sink": "service://Enrich/echo"}
                r = await c.post("/subscriptions", json={**body, "options": options})
                assert r.status_code == 201, r.text
                produce(kafka, src, records)
                assert proc.proc is not None
                await asyncio.to_thread(proc.proc.wait, 120)  # it kills itself at the point
            assert "SIGKILL at after-egress-commit" in proc.log.read_text(errors="replace")
            v2 = {
                **SCHEMA,
                "fields": [SCHEMA["fields"][0], {"name": "by", "type": ["string", "long"]}],
            }
            reg.register(subject, v2)
            await asyncio.to_thread(proc.start)
            got = await asyncio.to_thread(
                read_output, kafka, out, 1, decode=avro_reader(reg, subject, set())
            )
            sent = [o.value["i"] for o in got]
            dead = {d.value["i"] for d in await asyncio.to_thread(read_output, kafka, dlq, 1, 30)}
        finally:
            proc.stop()
    assert len(sent) == len(set(sent)), "an output was sent twice"
    assert dead, "no misfit was dead-lettered: the committed transaction left some out"
    assert not dead & set(sent), f"sent and dead-lettered: {sorted(dead & set(sent))}"
    lost = sorted(set(range(n)) - dead - set(sent))
    assert not lost, f"neither sent nor dead-lettered: {lost}"
    assert dead <= {i for i in range(n) if i % 10 == 0}
