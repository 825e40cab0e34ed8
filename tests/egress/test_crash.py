"""Exactly-once egress under crashes (issue 5's Done-when): 20,000 records through
topic → stateless handler → output topic and through topic → virtual object → output topic
(and through a stream handler, in batches of up to 100, to a third output topic),
while the Sluice broker is SIGKILLed at random at least 5 times, and also from inside an
egress transaction (records and marker produced, commit not sent). A read_committed reader
then finds each input exactly once in each output, by content and by the sequence headers
(``sluice-producer``, ``sluice-seq``, ``sluice-part``), in per-key input order.

Tansu (the test broker) is never restarted: it keeps records in memory only. On Tansu a dead
producer's open transaction becomes visible when its transactional id is re-initialized
(Kafka would abort it); the sink's marker rides in the same transaction, so both outcomes
resume at the right place.
"""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.broker.conftest import BrokerProcess, ServiceProcess
from tests.conftest import ServerLog
from tests.ingress_kafka.conftest import deploy_with_kafka
from tests.kafka import Tansu

from .conftest import check_exactly_once, new_topic, produce, read_output

# About a minute on an idle 2-core machine; more when other test sessions share it.
pytestmark = [pytest.mark.kafka, pytest.mark.slow, pytest.mark.timeout(300)]

RECORDS = 20_000
KEYS = 200
RANDOM_KILLS = 5
KILLS_IN_TRANSACTION = 2


async def _egress_sent(c: httpx.AsyncClient, admin: str) -> int:
    try:
        r = await c.get(f"{admin}/egress")
        return sum(w["records_sent"] for w in r.json()["sinks"])
    except (httpx.HTTPError, KeyError, ValueError):
        return -1


async def test_sigkill_with_egress_is_exactly_once(  # noqa: PLR0915 - one scenario, in order
    kafka: Tansu,
    tmp_path: Path,
    egress_services: ServiceProcess,
    kafka_server_log: ServerLog,
) -> None:
    src = new_topic(kafka, 4)
    out_map, out_obj, out_stream = new_topic(kafka, 4), new_topic(kafka, 4), new_topic(kafka, 4)
    rng = random.Random(int(os.environ.get("SLUICE_TEST_SEED", "5")))
    want = {i: f"key-{rng.randrange(KEYS)}".encode() for i in range(RECORDS)}
    produce(kafka, src, [(want[i].decode(), {"i": i}, None) for i in range(RECORDS)])

    broker = BrokerProcess(tmp_path / "data", *kafka_server_log.flags())
    broker.start()
    admin = f"http://127.0.0.1:{broker.admin}"
    started = time.monotonic()
    try:
        async with httpx.AsyncClient(timeout=30) as c:
            await deploy_with_kafka(c, admin, egress_services.uri, kafka, http1=True)
            # Also a stream handler (batches of up to 100 records), deduplicated by offsets.
            for name, sink, out, more in (
                ("map", "service://Enrich/map", out_map, {}),
                ("obj", "service://Tally/add", out_obj, {}),
                ("stream", "service://Stream/batch", out_stream, {"batch_max_records": "100"}),
            ):
                r = await c.post(
                    f"{admin}/subscriptions",
                    json={
                        "source": f"kafka://local/{src}",
                        "sink": sink,
                        "options": {
                            "name": name,
                            "max_in_flight": "500",
                            "output_topic": out,
                            **more,
                        },
                    },
                )
                assert r.status_code == 201, r.text

            # Random kills, and kills from inside the N-th egress transaction of a run.
            plan = ["random"] * RANDOM_KILLS + ["in-transaction"] * KILLS_IN_TRANSACTION
            rng.shuffle(plan)
            sent: list[int] = []
            in_tx = 0
            for how in plan:
                if how == "random":
                    await asyncio.sleep(rng.uniform(1.0, 3.0))
                    sent.append(await _egress_sent(c, admin))
                    broker.kill()
                    await asyncio.to_thread(broker.start)
                    continue
                broker.kill()
                await asyncio.to_thread(
                    broker.start, {"SLUICE_FAULTS": f"before-egress-commit={rng.randrange(2, 6)}"}
                )
                assert broker.proc is not None
                try:
                    await asyncio.to_thread(broker.proc.wait, 60)
                    in_tx += 1
                except subprocess.TimeoutExpired:
                    pass  # nothing left to send: killed below like the others
                broker.kill() if broker.proc.poll() is None else None
                await asyncio.to_thread(broker.start)
            print(f"killed {len(plan)} times ({in_tx} inside a transaction); sent before: {sent}")
            assert in_tx >= 1, "no kill happened inside an egress transaction"

            got_map = await asyncio.to_thread(read_output, kafka, out_map, RECORDS, 120)
            got_obj = await asyncio.to_thread(read_output, kafka, out_obj, RECORDS, 60)
            got_stream = await asyncio.to_thread(read_output, kafka, out_stream, RECORDS, 60)
            print(f"{RECORDS} records x 3 pipelines in {time.monotonic() - started:.0f}s")
            for name, got, out in (("map", got_map, out_map), ("obj", got_obj, out_obj)):
                if len(got) < RECORDS:  # diagnostics: per partition, committed vs all
                    raw = await asyncio.to_thread(
                        read_output, kafka, out, RECORDS, 20, committed=False
                    )
                    per = {
                        n: (
                            sum(1 for o in got if o.partition == n),
                            sum(1 for o in raw if o.partition == n),
                        )
                        for n in range(4)
                    }
                    r = await c.get(f"{admin}/egress")
                    print(f"{name}: (read_committed, all) per partition {per}; {r.text}")
            check_exactly_once(got_map, want)
            check_exactly_once(got_obj, want)
            check_exactly_once(got_stream, want)
            # The object's state is exactly once too: each key counted 1, 2, 3, ... in order.
            per_key: dict[bytes | None, list[int]] = {}
            for o in sorted(got_obj, key=lambda o: (o.partition, o.offset)):
                per_key.setdefault(o.key, []).append(o.value["n"])
            for key, counts in per_key.items():
                assert counts == list(range(1, len(counts) + 1)), f"{key!r}: {counts[:20]}"
            if kafka_server_log.physical:
                # Each partition sends what it ingested, with a producer of its own.
                producers = {o.headers["sluice-producer"] for o in got_map + got_obj}
                assert len(producers) > 1 and all("-p" in p for p in producers), producers
    finally:
        broker.stop()
    log = broker.log.read_text(errors="replace")
    assert "Traceback" not in log, log[-3000:]
