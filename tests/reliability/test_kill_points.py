"""Test 3: the broker dies exactly at the four points where a Kafka record changes hands.

``broker/faults.py`` makes the broker SIGKILL itself the N-th time it passes a point:

    after-kafka-poll      records fetched, not yet appended to the log
    after-log-append      a batch fsync'd, not yet applied nor acknowledged
    before-egress-commit  records and marker produced in the egress transaction, no commit
    after-egress-commit   committed, EgressCommitted not yet in the log

One broker data directory and one pipeline (topic → ``Tally`` virtual object → topic) serve
every trial; the trials of the four points run in a random order, TRIALS of each. A trial is
one broker lifetime, armed with one point and a random N: the broker first finishes what
the previous death left (the test waits until every input so far is in the output, read
with read_committed, and checks it: each input exactly once, by content and sequence
headers, in per-key order, with exact per-key counts and sums), then gets RECORDS_PER_TRIAL
new records, and must die at its point (exit by SIGKILL, with the fault's line in its log).
A death while finishing the previous work counts too: it is a death at the same point. After
the last trial an unarmed broker finishes, and a fresh read_committed reader checks all.

Figures per point: deaths, recovery time (restart to every input so far in the output:
median, max). Overall: records in, out, lost, duplicated, wrong sums, peak broker RSS.
"""

from __future__ import annotations

import asyncio
import random
import signal
import statistics
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from broker.faults import POINTS
from tests.broker.conftest import ServiceProcess
from tests.egress.conftest import (  # noqa: F401  (egress_services: a fixture)
    check_exactly_once,
    egress_services,
    new_topic,
    produce,
    read_output,
)
from tests.egress.test_crash import Broker
from tests.kafka import Tansu

from .conftest import sized
from .kafka_pipeline import LiveOutput, Model, peak_rss_mb, score, set_up

TRIALS = sized(25, 100)  # per point
RECORDS_PER_TRIAL = 200
KEYS = 20
PARTITIONS = 2
STUCK_S = 60.0  # a live broker that neither finishes nor dies for this long is stuck

# Fast: about 90 s on an idle 2-core machine; soak: about 8 minutes.
pytestmark = [pytest.mark.kafka, pytest.mark.slow, pytest.mark.timeout(sized(400, 1800))]


def _count(point: str, rng: random.Random) -> int:
    """Which pass kills: a trial's records cross the log many times, the rest once or twice."""
    return rng.randint(1, 40) if point == "after-log-append" else rng.randint(1, 3)


async def _diagnose(c: httpx.AsyncClient, admin: str, broker: Broker, live: LiveOutput) -> str:
    parts = [f"output read: {len(live.records)}, highest offsets {live.high}"]
    for path in ("/egress", "/subscriptions"):
        try:
            parts.append(f"{path}: {(await c.get(admin + path)).text[:2000]}")
        except httpx.HTTPError as e:
            parts.append(f"{path}: {e!r}")
    return "\n".join([*parts, broker.log.read_text(errors="replace")[-3000:]])


async def test_kill_points(  # noqa: PLR0915 - one scenario, in order
    kafka: Tansu,
    tmp_path: Path,
    egress_services: ServiceProcess,  # noqa: F811
    rng: random.Random,
    figures: dict[str, Any],
) -> None:
    src, out = new_topic(kafka, PARTITIONS), new_topic(kafka, PARTITIONS)
    model = Model()
    run = f"{rng.getrandbits(32):08x}"
    keys = [f"kp-{run}-{k}".encode() for k in range(KEYS)]
    plan = [point for point in POINTS for _ in range(TRIALS)]
    rng.shuffle(plan)
    deaths = dict.fromkeys(POINTS, 0)
    recovery: dict[str, list[float]] = {point: [] for point in POINTS}
    rss: list[float] = []
    checks = 0

    broker = Broker(tmp_path / "data")
    admin = f"http://127.0.0.1:{broker.admin}"

    def alive() -> bool:
        return broker.proc is not None and broker.proc.poll() is None

    async def finish(c: httpx.AsyncClient) -> bool:
        """Wait until every input so far is out and check it (True), or the broker died."""
        nonlocal checks
        done = await live.wait(live.count(len(model.keys)), alive=alive, within=STUCK_S)
        if not done:
            assert not alive(), f"stuck\n{await _diagnose(c, admin, broker, live)}"
            return False
        check_exactly_once(live.records, model.keys)
        assert score(live.records, model)["wrong_sums"] == 0, "a count or sum is wrong"
        checks += 1
        return True

    try:
        with LiveOutput(kafka, out) as live:
            async with httpx.AsyncClient(timeout=30) as c:
                await asyncio.to_thread(broker.start)
                await set_up(
                    c, admin, egress_services.uri, kafka,
                    src=src, output_topic=out, name="kp", max_in_flight="500",
                )  # fmt: skip
                for point in plan:
                    # The previous lifetime: unarmed (the first) or dead at its fault point.
                    if alive():
                        assert broker.proc is not None
                        rss.append(peak_rss_mb(broker.proc.pid))
                        broker.kill()
                    restarted = time.monotonic()
                    try:
                        await asyncio.to_thread(
                            broker.start, {"SLUICE_FAULTS": f"{point}={_count(point, rng)}"}
                        )
                    except RuntimeError:  # died before listening: checked below like any death
                        assert broker.proc is not None
                        if broker.proc.returncode != -signal.SIGKILL:
                            raise
                    line = f"sluice fault: SIGKILL at {point}"
                    fired = broker.log.read_text(errors="replace").count(line)
                    first = True
                    while await finish(c):
                        if first:
                            recovery[point].append(time.monotonic() - restarted)
                            first = False
                        batch = model.more(rng, RECORDS_PER_TRIAL, keys)
                        # Not idempotent: on Tansu an idempotent producer takes 0.5 s to start.
                        await asyncio.to_thread(
                            produce, kafka, src, batch, **{"enable.idempotence": False}
                        )
                    assert broker.proc is not None
                    assert broker.proc.returncode == -signal.SIGKILL, broker.proc.returncode
                    log = broker.log.read_text(errors="replace")
                    assert log.count(line) == fired + 1, f"died, but not at {point}: {log[-3000:]}"
                    deaths[point] += 1

                # The last death's aftermath, unarmed; then a fresh reader checks everything.
                await asyncio.to_thread(broker.start)
                assert await finish(c), "the unarmed broker died"
                assert broker.proc is not None
                rss.append(peak_rss_mb(broker.proc.pid))
        got = await asyncio.to_thread(read_output, kafka, out, len(model.keys), 60)
        figures.update(records_in=len(model.keys), **score(got, model), checks=checks)
        figures.update(deaths=deaths, peak_rss_mb=round(max(rss), 1))
        figures.update(
            recovery_s={
                p: {"median": round(statistics.median(r), 2), "max": round(max(r), 2)}
                for p, r in recovery.items()
                if r
            }
        )
        check_exactly_once(got, model.keys)
        assert figures["wrong_sums"] == 0, "a key's count or running sum differs from the model"
        assert deaths == dict.fromkeys(POINTS, TRIALS)
    finally:
        broker.stop()
    assert "Traceback" not in broker.log.read_text(errors="replace")
