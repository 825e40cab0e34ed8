"""Test 3: the broker dies exactly at the four points where a Kafka record changes hands.

``broker/faults.py`` makes the broker SIGKILL itself the N-th time it passes a point:

    after-kafka-poll      records fetched, not yet appended to the log
    after-log-append      a batch fsync'd, not yet applied nor acknowledged
    before-egress-commit  records and marker produced in the egress transaction, no commit
    after-egress-commit   committed, EgressCommitted not yet in the log

Each point has its own broker, data directory and pipeline (topic → ``Tally`` virtual
object → topic); the four run side by side, TRIALS trials each. A trial is one broker
lifetime, armed with its point and a random N: the broker first finishes what the previous
death left (the test waits until every input so far is in the output, read with
read_committed, and checks it: each input exactly once, by content and sequence headers, in
per-key order, with exact per-key counts and sums), then gets RECORDS_PER_TRIAL new records,
and must die at its point (exit by SIGKILL, with the fault's line in its log). A death while
finishing the previous work counts too: it is a death at the same point. After the last trial
an unarmed broker finishes, and a fresh read_committed reader checks everything.

Figures per point: deaths, checks, records in, out, lost, duplicated, wrong sums, recovery
time (restart to every input so far in the output: median, max), peak broker RSS.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import statistics
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from sluice.broker.faults import POINTS
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

TRIALS = sized(25, 100)  # per point
RECORDS_PER_TRIAL = 200
KEYS = 20
PARTITIONS = 2
STUCK_S = 60.0  # a live broker that neither finishes nor dies for this long is stuck

# Fast: 100 s on the shared 2-core machine at a load of 14 (less when idle); soak: 4 times that.
pytestmark = [pytest.mark.kafka, pytest.mark.slow, pytest.mark.timeout(sized(400, 1800))]


class PointTrials:
    """TRIALS deaths at one fault point, on a broker and a pipeline of its own."""

    def __init__(
        self, point: str, kafka: Tansu, root: Path, rng: random.Random, log: tuple[str, ...]
    ) -> None:
        self.point = point
        self.kafka = kafka
        self.rng = rng
        self.src, self.out = new_topic(kafka, PARTITIONS), new_topic(kafka, PARTITIONS)
        self.keys = [f"{point}-{rng.getrandbits(32):08x}-{k}".encode() for k in range(KEYS)]
        self.model = Model()
        self.broker = BrokerProcess(root / point / "data", *log)
        self.admin = f"http://127.0.0.1:{self.broker.admin}"
        self.fault_line = f"sluice fault: SIGKILL at {point}"
        self.deaths = 0
        self.checks = 0
        self.recovery: list[float] = []
        self.rss: list[float] = []

    def alive(self) -> bool:
        return self.broker.proc is not None and self.broker.proc.poll() is None

    def _sample_rss(self) -> None:
        """The broker's peak RSS so far (armed brokers die on their own: sample them alive)."""
        if self.broker.proc is not None:
            with contextlib.suppress(OSError, RuntimeError):  # it may be dying meanwhile
                self.rss.append(peak_rss_mb(self.broker.proc.pid))

    def _count(self) -> int:
        """Which pass kills: a trial's records cross the log many times, the rest a few."""
        return (
            self.rng.randint(1, 40) if self.point == "after-log-append" else self.rng.randint(1, 2)
        )

    async def run(self, c: httpx.AsyncClient, services: ServiceProcess) -> dict[str, Any]:
        try:
            with LiveOutput(self.kafka, self.out) as live:
                await asyncio.to_thread(self.broker.start)
                await set_up(
                    c, self.admin, services.uri, self.kafka,
                    src=self.src, output_topic=self.out, name="kp", max_in_flight="500",
                )  # fmt: skip
                for _ in range(TRIALS):
                    await self._trial(c, live)
                # The last death's aftermath, unarmed.
                await asyncio.to_thread(self.broker.start)
                assert await self._finish(c, live), f"{self.point}: the unarmed broker died"
        finally:
            self.broker.stop()
        log = self.broker.log.read_text(errors="replace")
        assert "Traceback" not in log, f"{self.point}: {log[-3000:]}"
        # Stopped, this broker sends nothing more (brokers=()); the other points' brokers
        # are not this pipeline's.
        got = await asyncio.to_thread(
            read_output, self.kafka, self.out, len(self.model.keys), 60, brokers=()
        )
        check_exactly_once(got, self.model.keys)
        figures = score(got, self.model)
        assert figures["wrong_sums"] == 0, f"{self.point}: a count or running sum is wrong"
        return {
            "deaths": self.deaths,
            "checks": self.checks,
            "records_in": len(self.model.keys),
            **figures,
            "recovery_s_median": round(statistics.median(self.recovery), 2),
            "recovery_s_max": round(max(self.recovery), 2),
            "peak_rss_mb": round(max(self.rss), 1),
        }

    async def _trial(self, c: httpx.AsyncClient, live: LiveOutput) -> None:
        """One lifetime: restart armed, finish the previous work, new records, death."""
        broker = self.broker
        if self.alive():  # the first, unarmed lifetime
            self._sample_rss()
            broker.kill()
        restarted = time.monotonic()
        fired = broker.log.read_text(errors="replace").count(self.fault_line)
        try:
            await asyncio.to_thread(
                broker.start, {"SLUICE_FAULTS": f"{self.point}={self._count()}"}
            )
        except RuntimeError:  # died before listening: checked below like any death
            assert broker.proc is not None
            if broker.proc.returncode != -signal.SIGKILL:
                raise
        first = True
        while await self._finish(c, live):
            if first:
                self.recovery.append(time.monotonic() - restarted)
                first = False
            batch = self.model.more(self.rng, RECORDS_PER_TRIAL, self.keys)
            # Not idempotent: on Tansu an idempotent producer takes 0.5 s to start.
            await asyncio.to_thread(
                produce, self.kafka, self.src, batch, **{"enable.idempotence": False}
            )
        assert broker.proc is not None
        assert broker.proc.returncode == -signal.SIGKILL, broker.proc.returncode
        log = broker.log.read_text(errors="replace")
        assert log.count(self.fault_line) == fired + 1, f"died, not at {self.point}: {log[-3000:]}"
        self.deaths += 1

    async def _finish(self, c: httpx.AsyncClient, live: LiveOutput) -> bool:
        """Wait until every input so far is out and check it (True), or the broker died."""
        done = await live.wait(live.count(len(self.model.keys)), alive=self.alive, within=STUCK_S)
        if not done:
            assert not self.alive(), (
                f"{self.point}: stuck\n{await diagnose(c, self.admin, self.broker.log, live)}"
            )
            return False
        check_exactly_once(live.records, self.model.keys)
        assert score(live.records, self.model)["wrong_sums"] == 0, "a count or sum is wrong"
        self.checks += 1
        self._sample_rss()
        return True


async def test_kill_points(
    tmp_path: Path,
    egress_services: ServiceProcess,
    rng: random.Random,
    figures: dict[str, Any],
    server_log: ServerLog,
) -> None:
    # A Kafka broker per point: Sluice brokers share the egress progress partition of a
    # cluster, so on one Tansu each death inside a transaction would hold the others'
    # recoveries until its restart (tests/egress/test_sink_recovery.py shows that case).
    with contextlib.ExitStack() as stack:
        clusters = [Tansu() for _ in POINTS]
        for k in clusters:
            stack.callback(k.stop)
            k.start()
        # One generator per point, drawn in a fixed order: a seed repeats each point's trials.
        runs = [
            PointTrials(p, k, tmp_path, random.Random(rng.getrandbits(64)), server_log.flags(p))
            for p, k in zip(POINTS, clusters, strict=True)
        ]
        async with httpx.AsyncClient(timeout=30) as c:
            results = await asyncio.gather(
                *(r.run(c, egress_services) for r in runs), return_exceptions=True
            )
    for r, res in zip(runs, results, strict=True):
        figures[r.point] = res if not isinstance(res, BaseException) else f"failed: {res!r}"
    for key in ("records_in", "records_out", "lost", "duplicated", "wrong_sums", "deaths"):
        figures[key] = sum(res[key] for res in results if isinstance(res, dict))
    for res in results:
        if isinstance(res, BaseException):
            raise res
    assert figures["deaths"] == TRIALS * len(POINTS)
