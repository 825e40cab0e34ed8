"""Test 2: Kafka → virtual object → Kafka while the Sluice broker is SIGKILLed at random.

Records (a unique ``i``, a random ``v``, one of KEYS keys) go from a 4-partition topic into
the ``Tally`` virtual object, whose results (the key's count and running sum) leave through
the subscription's output topic. The broker is SIGKILLed KILLS times, each time once the
committed output has passed a random count, after a random delay of up to 0.3 s (so that
deaths land anywhere in ingest, invocation and egress), and restarted at once. A fresh
read_committed reader must then find each input exactly once (by content and by the
``sluice-producer``/``sluice-seq`` headers), in per-key input order, with each key's count
and running sum equal to the model's prefix sums.

Figures: records in, out, lost, duplicated, wrong sums; kills; recovery time (restart to the
first output record committed by the new process); peak RSS of the broker; records/s from the
first start to the last output record. Tansu keeps records in memory and is never restarted
(DESIGN.md), so the Kafka side costs less than on Apache Kafka: records/s is an upper bound.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.broker.conftest import BrokerProcess, ServiceProcess
from tests.conftest import ServerLog
from tests.egress.conftest import (
    check_exactly_once,
    new_topic,
    produce,
    read_output,
)
from tests.kafka import Tansu

from .conftest import peak_rss_mb, sized
from .kafka_pipeline import LiveOutput, Model, diagnose, score, set_up

RECORDS = sized(20_000, 200_000)
KILLS = sized(10, 100)
KEYS = 200
PARTITIONS = 4
RECOVERY_LIMIT_S = 60.0  # a restarted broker that sends nothing for this long is stuck

# Fast: about a minute on an idle 2-core machine; soak: about 12 minutes.
pytestmark = [pytest.mark.kafka, pytest.mark.slow, pytest.mark.timeout(sized(300, 1800))]


async def test_kafka_vo_survives_random_kills(
    kafka: Tansu,
    tmp_path: Path,
    egress_services: ServiceProcess,
    rng: random.Random,
    figures: dict[str, Any],
    server_log: ServerLog,
) -> None:
    src, out = new_topic(kafka, PARTITIONS), new_topic(kafka, PARTITIONS)
    model = Model()
    run = f"{rng.getrandbits(32):08x}"
    keys = [f"vo-{run}-{k}".encode() for k in range(KEYS)]
    await asyncio.to_thread(produce, kafka, src, model.more(rng, RECORDS, keys))
    # Kill once the committed output passes each of these counts (and a random delay more).
    targets = sorted(rng.sample(range(RECORDS // 50, RECORDS * 9 // 10), KILLS))
    figures.update(records_in=RECORDS, keys=KEYS, partitions=PARTITIONS, kills=0)

    broker = BrokerProcess(tmp_path / "data", *server_log.flags())
    admin = f"http://127.0.0.1:{broker.admin}"

    def alive() -> bool:
        return broker.proc is not None and broker.proc.poll() is None

    recovery: list[float] = []
    rss: list[float] = []
    try:
        with LiveOutput(kafka, out) as live:
            async with httpx.AsyncClient(timeout=30) as c:
                started = time.monotonic()
                await asyncio.to_thread(broker.start)
                await set_up(
                    c, admin, egress_services.uri, kafka,
                    src=src, output_topic=out, name="vo", max_in_flight="500",
                )  # fmt: skip
                for k, target in enumerate(targets):
                    ok = await live.wait(live.count(target), alive=alive, within=RECOVERY_LIMIT_S)
                    why = await diagnose(c, admin, broker.log, live) if not ok else ""
                    assert ok, f"kill {k}: stuck\n{why}"
                    await asyncio.sleep(rng.uniform(0.0, 0.3))
                    assert broker.proc is not None
                    rss.append(peak_rss_mb(broker.proc.pid))
                    broker.kill()
                    figures["kills"] += 1
                    ends = await asyncio.to_thread(live.ends)
                    restarted = time.monotonic()
                    await asyncio.to_thread(broker.start)
                    # (The dead process's last transaction may have carried the rest.)
                    past = live.past(ends)
                    ok = await live.wait(
                        past, live.count(RECORDS), alive=alive, within=RECOVERY_LIMIT_S
                    )
                    why = await diagnose(c, admin, broker.log, live) if not ok else ""
                    assert ok, f"restart {k + 1}: no output\n{why}"
                    if past():
                        recovery.append(time.monotonic() - restarted)
                ok = await live.wait(live.count(RECORDS), alive=alive, within=sized(120, 600))
                elapsed = time.monotonic() - started
                assert broker.proc is not None
                rss.append(peak_rss_mb(broker.proc.pid))
        figures.update(
            recovery_s_median=round(statistics.median(recovery), 2),
            recovery_s_max=round(max(recovery), 2),
            peak_rss_mb=round(max(rss), 1),
            records_per_s=round(RECORDS / elapsed) if ok else None,
        )
        got = await asyncio.to_thread(read_output, kafka, out, RECORDS, 60)
        figures.update(score(got, model))
        check_exactly_once(got, model.keys)
        assert figures["wrong_sums"] == 0, "a key's count or running sum differs from the model"
    finally:
        broker.stop()
    log = broker.log.read_text(errors="replace")
    assert "Traceback" not in log, log[-3000:]
