"""Physical partitions (broker/partitions.py, ``--physical-partitions``) on the Kafka log: each
partition a processor, tables and a Kafka partition of its own; calls between invocations of
different partitions go through the shuffle, and a SIGKILL in the middle of them loses and
doubles nothing."""

from __future__ import annotations

import asyncio
import struct
import subprocess
import sys
import uuid
from pathlib import Path

import httpx

from sluice.broker.storage import RocksDBStore
from tests.broker.conftest import ROOT, BrokerProcess, ServiceProcess
from tests.kafka import Tansu

PARTITIONS = 4


async def test_calls_across_partitions_survive_a_kill_exactly_once(
    kafka: Tansu, tmp_path: Path
) -> None:
    """ChainA (a service) calls ChainB (a service) calls ChainC/<key> (an object): three
    invocations whose ids fall in different partitions, each call and each result a trip
    through the shuffle. Idempotent calls are in flight when the broker is SIGKILLed; after
    the restart every key holds its values once, and the retries get the first answers."""
    data = tmp_path / "data"
    log = f"kafka://{kafka.bootstrap}/log-{uuid.uuid4().hex[:8]}"
    broker = BrokerProcess(
        data, "--log", log, "--physical-partitions", "--partitions", str(PARTITIONS)
    )
    keys = [f"k{i}" for i in range(12)]
    calls = [(k, n) for n in range(3) for k in keys]
    first: dict[tuple[str, int], object] = {}
    with ServiceProcess("tests.scenarios.sluice_services") as service:
        broker.start()
        try:
            base = f"http://127.0.0.1:{broker.ingress}"
            admin = f"http://127.0.0.1:{broker.admin}"
            async with httpx.AsyncClient(timeout=60) as http:
                r = await http.post(f"{admin}/deployments", json={"uri": service.uri})
                assert r.status_code in (200, 201), r.text

                async def call(k: str, n: int) -> httpx.Response:
                    return await http.post(
                        f"{base}/ChainA/call",
                        json={"key": k, "value": f"v{n}"},
                        headers={"idempotency-key": f"{k}-{n}"},
                    )

                for k, n in calls[: len(keys)]:
                    r = await call(k, n)
                    assert r.status_code == 200, r.text
                    first[(k, n)] = r.json()
                pending = [asyncio.ensure_future(call(k, n)) for k, n in calls[len(keys) :]]
                await asyncio.sleep(0.3)
                broker.kill()
                await asyncio.gather(*pending, return_exceptions=True)

                broker.start()
                for k, n in calls:
                    r = await call(k, n)
                    assert r.status_code == 200, r.text
                    if (k, n) in first:
                        assert r.json() == first[(k, n)], "a retry got a new answer"
                for k in keys:
                    values = (await http.post(f"{base}/ChainC/{k}/get")).json()
                    assert sorted(values) == [f"v{n}|A|B|C" for n in range(3)], (k, values)

                await _check_admin(http, admin)
        finally:
            broker.stop()

    _check_tables(data)


async def _check_admin(http: httpx.AsyncClient, admin: str) -> None:
    """Every partition applied work; a Kafka cluster declared (in every partition's tables)
    is listed once; the CLI lists each partition's log."""
    parts = (await http.get(f"{admin}/health")).json()["partitions"]
    assert [p["partition"] for p in parts] == list(range(PARTITIONS)), parts
    assert all(p["applied"] > 0 for p in parts), parts
    props = {"bootstrap.servers": "127.0.0.1:9"}
    r = await http.post(f"{admin}/kafka-clusters", json={"name": "k", "properties": props})
    assert r.status_code == 201, r.text
    listed = (await http.get(f"{admin}/kafka-clusters")).json()
    assert [c["name"] for c in listed["clusters"]] == ["k"], listed
    status = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "sluice.broker", "log", "--admin-url", admin, "status"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    lines = [s for s in status.stdout.splitlines() if s.startswith("kafka log")]
    assert [s.split(", partition ")[1][:1] for s in lines] == ["0", "1", "2", "3"], status.stdout


def _check_tables(data: Path) -> None:
    """No shuffle row is left undelivered, and rows did cross partitions."""
    routed = 0
    for i in range(PARTITIONS):
        store = RocksDBStore(data / "partitions" / str(i) / "db")
        try:
            assert list(store.scan("shuffle", b"")) == [], f"partition {i} kept undelivered rows"
            for _, raw in store.scan("meta", b"shuffle_seen/"):
                routed += struct.unpack(">Q", raw)[0]
        finally:
            store.close()
    assert routed > 0, "no call crossed partitions: the test proves nothing"
