"""Subscriptions through the admin API and the CLI: created, paused, resumed and deleted
without a restart; refused when the handler does not exist; re-created under the same name
without re-delivery unless asked (``from=earliest``); declared in a file."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sluice.broker.config import BrokerSettings
from sluice.broker.server import Broker
from sluice.subscriptions import DeclarationError
from tests.broker.conftest import ROOT, ServiceProcess
from tests.ingress_kafka.conftest import Admin, new_topic, produce
from tests.kafka import Tansu

pytestmark = pytest.mark.kafka


async def _count(admin: Admin, key: str) -> int:
    return int((await admin.state("KafkaCounter", key)).get("count", 0))


async def _settles(admin: Admin, key: str, n: int, within: float = 15) -> int:
    """The count of ``key`` once it reached ``n`` and the broker is quiet (a record counted
    twice shows), or as it is after ``within`` seconds."""
    states = await admin.wait_counts([key], {key: n}, within)
    return int(states.get(key, {}).get("count", 0))


async def _position(admin: Admin, name: str) -> int:
    """Where subscription ``name`` is in its one partition: the next offset it takes."""
    status = (await admin.http.get(f"/subscriptions/{name}")).json()["status"]
    return int(sum(p["position"] for p in status["partitions"]))


async def _until_position(admin: Admin, name: str, n: int, within: float = 30) -> None:
    deadline = time.monotonic() + within
    while (at := await _position(admin, name)) < n:
        assert time.monotonic() < deadline, f"{name} at {at}, not {n}, after {within}s"
        await asyncio.sleep(0.1)


async def _adds_created(admin: Admin) -> list[int]:
    """When the broker created each KafkaCounter/add invocation (its log's clock), in order."""
    r = await admin.http.get("/invocations", params={"service": "KafkaCounter"})
    return sorted(i["created_at"] for i in r.json()["invocations"] if i["handler"] == "add")


def _records(key: str, n: int) -> list[tuple[str, dict[str, int], int]]:
    return [(key, {"v": 1}, 0) for _ in range(n)]


async def test_refuses_unknown_handler_and_cluster(
    kafka: Tansu, admin: Admin, restate_counter: ServiceProcess
) -> None:
    await admin.register(restate_counter.uri)
    await admin.cluster(kafka)
    body = {"source": "kafka://local/t", "sink": "service://KafkaCounter/nope"}
    r = await admin.http.post("/subscriptions", json=body)
    assert r.status_code == 400
    assert r.json()["message"] == (
        "cannot subscribe to service://KafkaCounter/nope: "
        "service 'KafkaCounter' has no handler 'nope'"
    )
    r = await admin.http.post("/subscriptions", json={**body, "sink": "service://Nobody/add"})
    assert r.status_code == 400 and "service 'Nobody' is not registered" in r.json()["message"]
    r = await admin.http.post("/subscriptions", json={**body, "source": "kafka://elsewhere/t"})
    assert r.status_code == 400 and "kafka cluster 'elsewhere' not found" in r.json()["message"]
    r = await admin.http.post("/subscriptions", json={**body, "sink": "KafkaCounter/add"})
    assert r.status_code == 400 and "expected service://SERVICE/HANDLER" in r.json()["message"]
    r = await admin.http.post("/kafka-clusters", json={"name": "x", "properties": {}})
    assert r.status_code == 400 and "bootstrap.servers" in r.json()["message"]


async def test_pause_resume_delete_and_recreate_without_restart(
    kafka: Tansu, admin: Admin, restate_counter: ServiceProcess
) -> None:
    topic = new_topic(kafka, 1)
    await admin.register(restate_counter.uri)
    await admin.cluster(kafka)
    # A second subscription of the topic, never paused: once it has read records, "life"
    # could have too. Its sink (remember) leaves the count alone.
    await admin.subscribe(topic, "service://KafkaCounter/remember", name="witness")
    produce(kafka, topic, _records("a", 10))
    sub = await admin.subscribe(topic, "service://KafkaCounter/add", name="life")
    assert await _settles(admin, "a", 10) == 10

    # Paused: records the witness takes, "life" does not, until it is resumed; every one of
    # its invocations for them is created after the resume was asked for.
    r = await admin.http.post("/subscriptions/life/pause")
    assert r.status_code == 200 and r.json()["paused"] is True
    produce(kafka, topic, _records("a", 5))
    await _until_position(admin, "witness", 15)
    assert await _position(admin, "life") == 10
    resumed_ms = int(time.time() * 1000)
    r = await admin.http.post(f"/subscriptions/{sub['id']}/resume")
    assert r.status_code == 200
    assert await _settles(admin, "a", 15) == 15
    created = await _adds_created(admin)
    assert len(created) == 15 and min(created[10:]) >= resumed_ms, "ingested while paused"

    # Deleted: records produced meanwhile wait for a subscription of that name.
    r = await admin.http.delete(f"/subscriptions/{sub['id']}")
    assert r.status_code == 202
    listed = (await admin.http.get("/subscriptions")).json()["subscriptions"]
    assert [s["name"] for s in listed] == ["witness"]
    produce(kafka, topic, _records("a", 3))
    await _until_position(admin, "witness", 18)
    assert await _count(admin, "a") == 15

    # Same name again: it resumes after what it ingested (the 3 new ones), no re-delivery
    # (once quiet, a re-delivered record would be counted), and nothing of the deleted one.
    created_ms = int(time.time() * 1000)
    await admin.subscribe(topic, "service://KafkaCounter/add", name="life")
    assert await _settles(admin, "a", 18) == 18
    assert await _position(admin, "life") == 18
    created = await _adds_created(admin)
    assert len(created) == 18 and min(created[15:]) >= created_ms, "ingested while deleted"

    # Unless asked: from=earliest starts over.
    assert (await admin.http.delete("/subscriptions/life")).status_code == 202
    await admin.subscribe(topic, "service://KafkaCounter/add", name="life", **{"from": "earliest"})
    assert await _settles(admin, "a", 36) == 36
    assert (await admin.http.delete("/subscriptions/witness")).status_code == 202

    # A cluster in use cannot be deleted.
    r = await admin.http.delete("/kafka-clusters/local")
    assert r.status_code == 409 and "life" in r.json()["message"]


async def test_cli_manages_clusters_and_subscriptions(
    kafka: Tansu, broker: Broker, admin: Admin, restate_counter: ServiceProcess
) -> None:
    topic = new_topic(kafka, 2)
    await admin.register(restate_counter.uri)
    url = f"http://127.0.0.1:{broker.admin_port}"

    async def sluice(*args: str) -> str:
        cmd = [sys.executable, "-m", "sluice.broker", *args[:1], "--admin-url", url, *args[1:]]
        p = await asyncio.to_thread(
            subprocess.run, cmd, cwd=ROOT, capture_output=True, text=True, timeout=30
        )
        assert p.returncode == 0, p.stderr
        return p.stdout

    out = await sluice("kafka-clusters", "create", "local", "--bootstrap", kafka.bootstrap)
    assert "created kafka cluster local" in out
    assert kafka.bootstrap in await sluice("kafka-clusters", "list")
    produce(kafka, topic, [("c", {"v": 2}, i % 2) for i in range(8)])
    out = await sluice(
        "subscriptions", "create", "--name", "cli", "--source", f"kafka://local/{topic}",
        "--sink", "service://KafkaCounter/add", "--max-in-flight", "10",
    )  # fmt: skip
    assert "created subscription cli" in out
    assert await _settles(admin, "c", 8) == 8
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        listing = await sluice("subscriptions", "list")
        if listing.count("ingested 4, lag 0") == 2:
            break
        await asyncio.sleep(0.2)
    assert "cli  sub_" in listing and "[running]" in listing, listing
    assert listing.count("ingested 4, lag 0, dead-lettered 0") == 2, listing
    assert "paused subscription cli" in await sluice("subscriptions", "pause", "cli")
    assert "[paused]" in await sluice("subscriptions", "list")
    assert "resumed subscription cli" in await sluice("subscriptions", "resume", "cli")
    assert "deleted subscription cli" in await sluice("subscriptions", "delete", "cli")
    assert "no subscriptions" in await sluice("subscriptions", "list")
    assert "deleted kafka cluster local" in await sluice("kafka-clusters", "delete", "local")
    # Errors are one line and exit code 1.
    p = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "sluice.broker", "subscriptions", "--admin-url", url, "create",
         "--source", "kafka://local/x", "--sink", "service://KafkaCounter/add"],
        cwd=ROOT, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert p.returncode == 1
    assert (
        p.stderr.strip()
        == "sluice: error: POST /subscriptions: HTTP 400: kafka cluster 'local' not found: "
        "create it first (POST /kafka-clusters)"
    )


async def test_declarations_file_is_reconciled_at_start(
    kafka: Tansu, tmp_path: Path, restate_counter: ServiceProcess
) -> None:
    topic = new_topic(kafka, 1)
    produce(kafka, topic, _records("d", 4))
    decl = tmp_path / "sluice.toml"
    decl.write_text(
        f"""
[[kafka_clusters]]
name = "local"
properties = {{ "bootstrap.servers" = "{kafka.bootstrap}" }}

[[subscriptions]]
name = "declared"
source = "kafka://local/{topic}"
sink = "service://KafkaCounter/add"
"""
    )
    settings = BrokerSettings(
        data_dir=tmp_path / "data", ingress_port=0, admin_port=0, declarations=decl
    )
    b = Broker(settings)
    await b.start()
    try:
        admin = Admin(b.admin_port)
        # The handler is not registered yet: the subscription waits, and says why.
        subs = (await admin.http.get("/subscriptions")).json()["subscriptions"]
        assert subs[0]["name"] == "declared"
        assert subs[0]["status"]["state"] == "service 'KafkaCounter' is not registered"
        await admin.register(restate_counter.uri)  # a deployment change reconciles
        assert await _settles(admin, "d", 4) == 4
        await admin.close()
    finally:
        await b.stop()

    # Removed from the file: deleted at the next start. An invalid file stops the start.
    decl.write_text(decl.read_text().split("[[subscriptions]]")[0])
    b = Broker(settings)
    await b.start()
    try:
        admin = Admin(b.admin_port)
        assert (await admin.http.get("/subscriptions")).json()["subscriptions"] == []
        await admin.close()
    finally:
        await b.stop()
    decl.write_text(decl.read_text() + '\n[[subscriptions]]\nname = "x"\nsource = "nowhere"\n')
    with pytest.raises(DeclarationError, match=r"sluice.toml:\d+: subscriptions.0"):
        b = Broker(settings)
        try:
            await b.start()
        finally:
            await b.stop()
