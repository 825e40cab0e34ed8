"""Crash test (issue 4's Done-when): 20,000 records over 4 partitions and 200 keys feed a
counter virtual object while the Sluice broker is SIGKILLed at random points at least 5
times; after the last restart every key's count and sum are exact and every key saw its
records in offset order: nothing lost, nothing applied twice.

Tansu is never restarted (it keeps records in memory only); the broker is.
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import httpx
import pytest

from tests.broker.conftest import BrokerProcess, ServiceProcess
from tests.conftest import ServerLog
from tests.kafka import Tansu

from .conftest import Admin, deploy_with_kafka, new_topic, produce

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

RECORDS = 20_000
KEYS = 200
KILLS = 5


async def _total(c: httpx.AsyncClient, admin: str, sub: str) -> int:
    try:
        r = await c.get(f"{admin}/subscriptions/{sub}")
        return sum(p["ingested"] for p in r.json()["status"]["partitions"])
    except (httpx.HTTPError, KeyError, ValueError):
        return -1


@pytest.mark.parametrize("sdk_name", ["restate", "sluice"])
async def test_sigkill_while_ingesting_is_exactly_once(
    sdk_name: str,
    kafka: Tansu,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    kafka_server_log: ServerLog,
) -> None:
    svc: ServiceProcess = request.getfixturevalue(f"{sdk_name}_counter")
    topic = new_topic(kafka, 4)
    rng = random.Random(4)
    want: dict[str, list[int]] = {f"key-{k}": [0, 0] for k in range(KEYS)}
    records = []
    for i in range(RECORDS):
        key = f"key-{rng.randrange(KEYS)}"
        v = rng.randrange(1000)
        want[key][0] += 1
        want[key][1] += v
        records.append((key, {"v": v, "i": i}, None))
    produce(kafka, topic, records)

    broker = BrokerProcess(tmp_path / "data", *kafka_server_log.flags())
    broker.start()
    admin = f"http://127.0.0.1:{broker.admin}"
    try:
        async with httpx.AsyncClient(timeout=30) as c:
            await deploy_with_kafka(c, admin, svc.uri, kafka)
            r = await c.post(
                f"{admin}/subscriptions",
                json={
                    "source": f"kafka://local/{topic}",
                    "sink": "service://KafkaCounter/add",
                    "options": {"name": "crash", "max_in_flight": "500"},
                },
            )
            assert r.status_code == 201, r.text

            kills = 0
            seen: list[int] = []
            while kills < KILLS:
                await asyncio.sleep(rng.uniform(0.3, 1.5))
                seen.append(await _total(c, admin, "crash"))
                broker.kill()
                kills += 1
                await asyncio.to_thread(broker.start)
            print(f"{sdk_name}: killed {kills} times; ingested (this process) before each: {seen}")

            # Every key's count reached, then the broker quiet (a late duplicate would show).
            counter = Admin(broker.admin)
            try:
                counts = {key: count for key, (count, _) in want.items()}
                states = await counter.wait_counts(list(want), counts, within=150)
            finally:
                await counter.close()
            lost = dup = disorder = 0
            for key, (count, total) in want.items():
                st = states.get(key, {})
                got = st.get("count", 0)
                lost += max(count - got, 0)
                dup += max(got - count, 0)
                assert st.get("sum", 0) == total or got != count, f"{key}: wrong sum"
                disorder += st.get("out_of_order", 0)
            assert (lost, dup, disorder) == (0, 0, 0), (
                f"lost {lost}, duplicated {dup}, out of order {disorder}"
            )
    finally:
        broker.stop()
    log = broker.log.read_text(errors="replace")
    assert "Traceback" not in log, log[-3000:]
