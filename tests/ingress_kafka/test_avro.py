"""Avro on the way in: a subscription with ``serde = "avro"`` reads records in the Schema
Registry wire format, with the writer schema of each record's id from the file registry or
from a Schema Registry over HTTP (the small local server of tests/connectors), and its
handler sees JSON; ``input_schema`` resolves every writer against one reader schema. A record
the registry cannot explain is dead-lettered with the reason; a registry that cannot answer
dead-letters nothing: the subscription stalls, says why, and ingests everything exactly once
when the registry is back. Handlers' results, read from output topics, show what they saw.
"""

from __future__ import annotations

import asyncio
import json
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from sluice.broker.server import Broker
from sluice.connectors.serde import (
    AvroSerde,
    FileSchemaRegistry,
    HttpSchemaRegistry,
    SchemaRegistry,
)
from tests.broker.conftest import ROOT, BrokerProcess, ServiceProcess, free_port
from tests.connectors.registry_server import RegistryServer
from tests.egress.conftest import Out, avro_reader, check_exactly_once, read_output
from tests.kafka import Tansu

from .conftest import Admin, new_topic, produce

pytestmark = pytest.mark.kafka

SCHEMA = {
    "type": "record",
    "name": "Order",
    "namespace": "sluice.test",
    "fields": [{"name": "i", "type": "long"}, {"name": "by", "type": "string"}],
}
# Schema evolution: the reader adds a defaulted field; a newer writer has one more field.
READER = {
    **SCHEMA,
    "fields": [*SCHEMA["fields"], {"name": "tier", "type": "string", "default": "basic"}],
}
NEWER = {
    **SCHEMA,
    "fields": [
        *SCHEMA["fields"],
        {"name": "tier", "type": "string"},
        {"name": "note", "type": "string"},
    ],
}
# Not readable as READER: "i" is a string.
INCOMPATIBLE = {**SCHEMA, "fields": [{"name": "i", "type": "string"}, SCHEMA["fields"][1]]}


def avro(reg: SchemaRegistry, subject: str, schema: dict[str, Any], value: Any) -> bytes:
    """``value`` as a wire-format record of ``schema`` (registered under ``subject``)."""
    return AvroSerde(reg, subject, schema).encode(json.dumps(value).encode())


def _keys(n: int) -> dict[int, bytes | None]:
    return {i: f"k{i % 11}".encode() for i in range(n)}


def _dead(kafka: Tansu, topic: str, n: int, within: float = 30) -> dict[int, Out]:
    """The dead letters of ``topic`` by input offset, values as raw bytes."""
    got = read_output(kafka, topic, n, within, decode=bytes)
    return {int(d.headers["sluice-dlq-offset"]): d for d in got}


async def test_avro_records_reach_handlers_as_json(
    avro_registry: tuple[str, SchemaRegistry],
    kafka: Tansu,
    broker: Broker,
    admin: Admin,
    egress_services: ServiceProcess,
) -> None:
    """The same Avro topic into three subscriptions: a handler whose JSON result goes out
    as JSON, the same with Avro out (Avro in, Avro out), and a stream handler (its batches
    must carry decoded values, not the wire bytes)."""
    address, reg = avro_registry
    await admin.register(egress_services.uri, http1=True)
    await admin.cluster(kafka, schema_registry=address)
    src = new_topic(kafka, 3)
    out, out_avro, out_stream = new_topic(kafka, 3), new_topic(kafka, 3), new_topic(kafka, 2)
    n = 300
    keys = _keys(n)
    produce(
        kafka,
        src,
        [
            (keys[i], avro(reg, f"{src}-value", SCHEMA, {"i": i, "by": f"b{i}"}), None)
            for i in range(n)
        ],
    )
    sub = await admin.subscribe(src, "service://Enrich/echo", serde="avro", output_topic=out)
    assert sub["options"]["serde"] == "avro"
    await admin.subscribe(
        src,
        "service://Enrich/echo",
        serde="avro",
        output_topic=out_avro,
        output_serde="avro",
        output_schema=json.dumps(SCHEMA),
    )
    await admin.subscribe(
        src, "service://Stream/batch", serde="avro", output_topic=out_stream, batch_max_records=40
    )

    got = await asyncio.to_thread(read_output, kafka, out, n)
    check_exactly_once(got, keys)
    assert all(o.value == {"i": o.value["i"], "by": f"b{o.value['i']}"} for o in got)

    ids: set[int] = set()
    decode = avro_reader(reg, f"{out_avro}-value", ids)
    got = await asyncio.to_thread(read_output, kafka, out_avro, n, decode=decode)
    check_exactly_once(got, keys)
    assert all(o.value == {"i": o.value["i"], "by": f"b{o.value['i']}"} for o in got)
    assert ids == {reg.latest(f"{out_avro}-value")[0]}

    got = await asyncio.to_thread(read_output, kafka, out_stream, n)
    check_exactly_once(got, keys)
    assert {o.value["by"] for o in got} == {"stream"}


async def test_input_schema_resolves_older_and_newer_writers(
    kafka: Tansu, broker: Broker, admin: Admin, egress_services: ServiceProcess, tmp_path: Path
) -> None:
    """Records written with an older schema (the reader's default fills the missing field)
    and a newer one (its extra field is dropped) read as one reader schema, given inline, as
    a .avsc file, or as a registry subject; a writer the reader cannot resolve is
    dead-lettered."""
    path = tmp_path / "registry.json"
    reg = FileSchemaRegistry(path)
    await admin.register(egress_services.uri, http1=True)
    await admin.cluster(kafka, schema_registry=str(path))
    src = new_topic(kafka, 2)
    n = 90
    keys = _keys(n)
    bad = {i for i in range(n) if i % 30 == 17}
    records: list[tuple[Any, Any, int | None]] = []
    for i in range(n):
        value: dict[str, Any]
        if i in bad:
            schema, value = INCOMPATIBLE, {"i": f"{i}", "by": "old"}
        elif i % 2:
            schema, value = NEWER, {"i": i, "by": "new", "tier": "gold", "note": f"n{i}"}
        else:
            schema, value = SCHEMA, {"i": i, "by": "old"}
        records.append((keys[i], avro(reg, f"{src}-value", schema, value), None))
    produce(kafka, src, records)
    avsc = tmp_path / "reader.avsc"
    avsc.write_text(json.dumps(READER))
    reg.register("order-reader", READER)

    outs = []
    for ref in (json.dumps(READER), str(avsc), "order-reader"):
        out, dlq = new_topic(kafka, 2), new_topic(kafka, 1)
        sub = await admin.subscribe(
            src,
            "service://Enrich/echo",
            serde="avro",
            input_schema=ref,
            output_topic=out,
            dead_letter_topic=dlq,
        )
        assert sub["options"]["input_schema"] == ref
        outs.append((out, dlq))
    want = {i: k for i, k in keys.items() if i not in bad}
    for out, dlq in outs:
        got = await asyncio.to_thread(read_output, kafka, out, len(want))
        check_exactly_once(got, want)
        for o in got:
            i = o.value["i"]
            assert o.value == (
                {"i": i, "by": "new", "tier": "gold"}
                if i % 2
                else {"i": i, "by": "old", "tier": "basic"}
            )
        dead = await asyncio.to_thread(_dead, kafka, dlq, len(bad))
        assert len(dead) == len(bad)
        for d in dead.values():
            assert json.loads(AvroSerde(reg, "any").decode(d.value))["by"] == "old"
            assert "cannot read with schema id" in d.headers["sluice-dlq-reason"], d.headers


async def test_bad_avro_records_are_dead_lettered_with_reasons(
    kafka: Tansu, broker: Broker, admin: Admin, egress_services: ServiceProcess
) -> None:
    """Each kind of record the registry cannot explain goes to the dead-letter topic, its
    key and value byte for byte, the reason in ``sluice-dlq-reason``; without a dead-letter
    topic it is a failed invocation that says the same. The records around them get
    through, in order."""
    with RegistryServer() as server:
        reg = HttpSchemaRegistry(server.url)
        await admin.register(egress_services.uri, http1=True)
        await admin.cluster(kafka, schema_registry=server.url)
        src, out, dlq, out2 = (
            new_topic(kafka, 1),
            new_topic(kafka, 1),
            new_topic(kafka, 1),
            new_topic(kafka, 1),
        )
        good = avro(reg, f"{src}-value", SCHEMA, {"i": 0, "by": "x"})
        bad_values = {
            "magic byte is 1": b"\x01" + good[1:],
            "shorter than the 5-byte wire header": b"\x00\x00\x01",
            "unknown schema id 4242": b"\x00" + struct.pack(">I", 4242) + good[5:],
            "cannot read with schema id 1": good[:7],  # the body cut short
        }
        values: list[tuple[bytes, str | None]] = []
        for why, value in bad_values.items():
            i = len(values) // 2
            values.append((avro(reg, f"{src}-value", SCHEMA, {"i": i, "by": "x"}), None))
            values.append((value, why))
        values.append((avro(reg, f"{src}-value", SCHEMA, {"i": len(bad_values), "by": "x"}), None))
        produce(kafka, src, [(b"k", v, 0) for v, _ in values])
        await admin.subscribe(
            src, "service://Enrich/echo", serde="avro", output_topic=out, dead_letter_topic=dlq
        )
        await admin.subscribe(src, "service://Enrich/echo", serde="avro", output_topic=out2)

        n_good = len(bad_values) + 1
        for topic in (out, out2):
            got = await asyncio.to_thread(read_output, kafka, topic, n_good)
            check_exactly_once(got, dict.fromkeys(range(n_good), b"k"))
        dead = await asyncio.to_thread(_dead, kafka, dlq, len(bad_values))
        assert sorted(dead) == [o for o, (_, why) in enumerate(values) if why]
        for offset, d in dead.items():
            value, reason = values[offset]
            assert d.key == b"k" and d.value == value
            assert reason is not None and reason in d.headers["sluice-dlq-reason"], d.headers
            assert d.headers["sluice-dlq-reason"].startswith("avro serde: "), d.headers
        unknown = next(d for d in dead.values() if "4242" in d.headers["sluice-dlq-reason"])
        assert "HTTP 404" in unknown.headers["sluice-dlq-reason"]  # what the registry said

        deadline = time.monotonic() + 20
        failed: list[dict[str, Any]] = []
        while time.monotonic() < deadline and len(failed) < len(bad_values):
            rows = (await admin.http.get("/invocations?status=completed")).json()["invocations"]
            failed = [r for r in rows if r["service"] == "Enrich" and r["last_failure"]]
            await asyncio.sleep(0.2)
        reasons = sorted(r["last_failure"] for r in failed)
        assert len(reasons) == len(bad_values), reasons
        for why in bad_values:
            assert sum(why in r for r in reasons) == 1, (why, reasons)


def _fill(server: RegistryServer, src: str) -> HttpSchemaRegistry:
    """SCHEMA and NEWER under ids 1 and 2 in a fresh (in-memory) registry."""
    reg = HttpSchemaRegistry(server.url)
    assert reg.register(f"{src}-value", SCHEMA) == 1
    assert reg.register(f"{src}-value", NEWER) == 2
    return reg


async def _registry_goes_down(
    kafka: Tansu, admin: Admin, port: int, *, src: str, out: str, dlq: str, n1: int, n2: int
) -> tuple[dict[str, Any], RegistryServer]:
    """With a registry up on ``port`` (cluster 'local' declared with it), records 0..n1
    (schema id 1) go through a new subscription of ``src`` to ``out``; then the registry
    stops and records n1..n1+n2 are produced (every third of schema id 2, which the broker
    has not fetched yet). Returns the subscription and the stopped registry."""
    keys = _keys(n1 + n2)
    with RegistryServer(port) as server:
        await admin.cluster(kafka, schema_registry=server.url)
        reg = _fill(server, src)

        def record(i: int) -> tuple[Any, Any, int | None]:
            if i < n1 or i % 3:
                return keys[i], avro(reg, f"{src}-value", SCHEMA, {"i": i, "by": "v1"}), None
            value = {"i": i, "by": "v2", "tier": "t", "note": "n"}
            return keys[i], avro(reg, f"{src}-value", NEWER, value), None

        produce(kafka, src, [record(i) for i in range(n1)])
        sub = await admin.subscribe(
            src, "service://Enrich/echo", serde="avro", output_topic=out, dead_letter_topic=dlq
        )
        got = await asyncio.to_thread(read_output, kafka, out, n1)
        check_exactly_once(got, {i: keys[i] for i in range(n1)})
        assert server.requests["GET /schemas"] == 1  # the broker fetched id 1 only
        later = [record(i) for i in range(n1, n1 + n2)]  # (the client caches the ids)
    produce(kafka, src, later)
    return sub, server


async def _status(admin: Admin, name: str, until: str, within: float = 30) -> dict[str, Any]:
    """The subscription's status, once its state contains ``until`` (or time is up)."""
    deadline = time.monotonic() + within
    while True:
        status: dict[str, Any] = (await admin.http.get(f"/subscriptions/{name}")).json()["status"]
        if until in status["state"] or time.monotonic() > deadline:
            return status
        await asyncio.sleep(0.2)


@pytest.mark.timeout(180)
async def test_registry_down_stalls_the_subscription_then_everything_arrives_once(
    kafka: Tansu, broker: Broker, admin: Admin, egress_services: ServiceProcess
) -> None:
    """The registry stops after the first records were read: records of a schema id the
    broker has not fetched yet wait, uncommitted and not dead-lettered, while the status
    says why; records of the id it has cached would not need it, but may not overtake.
    When the registry answers again, every record arrives exactly once, in per-key order."""
    port = free_port()
    await admin.register(egress_services.uri, http1=True)
    src, out, dlq = new_topic(kafka, 2), new_topic(kafka, 2), new_topic(kafka, 1)
    n1, n2 = 100, 200
    keys = _keys(n1 + n2)
    sub, registry = await _registry_goes_down(
        kafka, admin, port, src=src, out=out, dlq=dlq, n1=n1, n2=n2
    )

    # The registry is gone: the subscription says why and waits.
    status = await _status(admin, sub["name"], "stalled")
    assert "stalled" in status["state"] and "unreachable" in status["state"], status
    await asyncio.sleep(3)  # (a few retries)
    status = await _status(admin, sub["name"], "stalled", 0)
    assert "stalled" in status["state"], status
    assert sum(p["dead_lettered"] for p in status["partitions"]) == 0, status
    assert sum(p["ingested"] for p in status["partitions"]) < n1 + n2, status
    early = await asyncio.to_thread(read_output, kafka, out, n1 + n2, 3)
    assert not [o for o in early if o.value["by"] == "v2"], "a v2 record got through"

    with registry.again():
        got = await asyncio.to_thread(read_output, kafka, out, n1 + n2)
        dead = await asyncio.to_thread(read_output, kafka, dlq, 1, 2)
        assert dead == [], [d.headers for d in dead]
        check_exactly_once(got, keys)
        assert {o.value["by"] for o in got if o.value["i"] >= n1 and o.value["i"] % 3 == 0} == {
            "v2"
        }
        status = await _status(admin, sub["name"], "running")
        assert status["state"] == "running", status
        assert sum(p["ingested"] for p in status["partitions"]) == n1 + n2, status
        assert sum(p["lag"] for p in status["partitions"]) == 0, status


async def test_avro_subscription_settings(
    kafka: Tansu, broker: Broker, admin: Admin, egress_services: ServiceProcess, tmp_path: Path
) -> None:
    """Refused with a 400 that says why: Avro with no registry anywhere, a bad input
    schema, an input schema for another serde. The CLI creates one."""
    await admin.register(egress_services.uri, http1=True)
    await admin.cluster(kafka)  # no schema registry
    src = new_topic(kafka, 1)

    async def create(**options: str) -> httpx.Response:
        body = {"source": f"kafka://local/{src}", "sink": "service://Enrich/echo"}
        return await admin.http.post("/subscriptions", json={**body, "options": options})

    r = await create(serde="avro")
    assert r.status_code == 400, r.text
    assert r.json()["message"] == (
        "serde 'avro' needs a schema registry: set schema_registry on the subscription "
        "or on kafka cluster 'local'"
    )
    reg = str(tmp_path / "r.json")
    r = await create(serde="avro", schema_registry=reg, input_schema="{")
    assert r.status_code == 400 and "input_schema" in r.json()["message"], r.text
    r = await create(serde="avro", schema_registry=reg, input_schema=str(tmp_path / "no.avsc"))
    assert r.status_code == 400 and "no.avsc" in r.json()["message"], r.text
    r = await create(serde="json", input_schema=json.dumps(SCHEMA))
    assert r.status_code == 400, r.text
    assert "input_schema is for serde 'avro'" in r.json()["message"], r.text

    avsc = tmp_path / "order.avsc"
    avsc.write_text(json.dumps(SCHEMA))
    cmd = [
        sys.executable, "-m", "sluice.broker", "subscriptions", "--admin-url",
        f"http://127.0.0.1:{broker.admin_port}", "create", "--name", "avro-cli",
        "--source", f"kafka://local/{src}", "--sink", "service://Enrich/echo",
        "--serde", "avro", "--input-schema", str(avsc), "--schema-registry", reg,
    ]  # fmt: skip
    p = await asyncio.to_thread(
        subprocess.run, cmd, cwd=ROOT, capture_output=True, text=True, timeout=30
    )
    assert p.returncode == 0, p.stderr
    options = (await admin.http.get("/subscriptions/avro-cli")).json()["options"]
    assert options["serde"] == "avro" and options["input_schema"] == str(avsc), options
    assert options["schema_registry"] == reg, options


@pytest.mark.timeout(240)
async def test_broker_killed_while_stalled_loses_nothing(
    kafka: Tansu, tmp_path: Path, egress_services: ServiceProcess
) -> None:
    """The broker is SIGKILLed while its subscription waits for the registry: the records
    it held were neither acknowledged nor dead-lettered, so the restarted broker (the
    registry back) reads them again, and each arrives exactly once."""
    port = free_port()
    src, out, dlq = new_topic(kafka, 2), new_topic(kafka, 2), new_topic(kafka, 1)
    n1, n2 = 60, 150
    proc = BrokerProcess(tmp_path / "data")
    proc.start()
    admin = Admin(proc.admin)
    try:
        await admin.register(egress_services.uri, http1=True)
        sub, registry = await _registry_goes_down(
            kafka, admin, port, src=src, out=out, dlq=dlq, n1=n1, n2=n2
        )
        status = await _status(admin, sub["name"], "stalled")
        assert "unreachable" in status["state"], status
        proc.kill()
        with registry.again():
            proc.start()
            got = await asyncio.to_thread(read_output, kafka, out, n1 + n2)
            check_exactly_once(got, _keys(n1 + n2))
            dead = await asyncio.to_thread(read_output, kafka, dlq, 1, 2)
            assert dead == [], [d.headers for d in dead]
    finally:
        await admin.close()
        proc.stop()
    log = proc.log.read_text(errors="replace")
    assert "Traceback" not in log, log[-3000:]
