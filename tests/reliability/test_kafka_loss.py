"""The Kafka-loss test: Tansu on s3:// storage is SIGKILLed and restarted under load, while the
Sluice broker keeps running on its disk; nothing accepted is lost or duplicated, and the broker
resumes on its own (its process is never restarted).

Load, both at once:
- idempotent HTTP calls into the ``Customer`` virtual object (examples/orders/service.py), one
  caller per customer, each call retried with its idempotency key until it is answered;
- a Kafka subscription (a 4-partition topic into the ``Tally`` virtual object, whose results
  leave through the subscription's output topic, tests/reliability/kafka_pipeline.py).

The input comes in KILLS + 1 chunks. Tansu is SIGKILLed once the committed output is at a random
point of each chunk but the last, stays down for a random 0.5 to 3 s, and starts again on the
same port and bucket; then the next chunk is produced (into the restarted Tansu). On the Kafka
log (``kafka-log``) the log topic lives in that same Tansu, so the broker loses its log for as
long as Tansu is down; on the embedded log only ingress and egress lose their Kafka.

Then: every HTTP call was answered with its customer's running totals at that order (a retry
of an answered call gets the first answer), each customer's totals count each order once;
a fresh read_committed reader finds each Kafka input exactly once in the output (by content
and by the ``sluice-producer``/``sluice-seq`` headers), in per-key order, with each key's count
and running sum equal to the model's; and the broker process that started is the one that
finished, its health green.

What Tansu 0.6.0 on S3 cannot do, and this test allows for (tests/reliability/
tansu_s3_offsets.py reproduces each with plain confluent-kafka):
- Records acknowledged before a SIGKILL and no longer in flight survive it, at their offsets.
  Records *in flight* at the kill do not: Tansu has advanced the producer's sequence and
  reserved their offsets, not yet written the batch; after the restart it answers librdkafka's
  retry as a duplicate, which librdkafka reports as delivered (offset unknown or a small bogus
  one). 6 runs in 13 lost 6 to 17 such acknowledged records, and the reserved offsets stay a
  hole. Other times the producer's sequence and Tansu's part ways (librdkafka's fatal
  OUT_OF_ORDER_SEQUENCE_NUMBER). The Kafka log fails on either (an acknowledgement below what
  it has already read; a fatal producer error): the broker answers what it cannot confirm with
  503 and starts again in its process (broker/errors.py, ``LogInterrupted``), and the new one
  replays across the hole and finishes (``broker_resumed_in_process`` lists the reasons).
  (The embedded log's producers are not exposed that way: the input is produced between the
  kills, and egress recovers its transactional producer.)
- Once in 8 runs on the Kafka log, the kill left a transaction of the egress producer between
  the two steps of its commit (PrepareCommit written, the commit not): on the restarted Tansu
  it holds read_committed readers of the progress partition back for good. Tansu has no
  transaction timeout, and its InitProducerId on the same transactional id ends an open
  transaction only in state Begin (tansu-storage/src/dynostore.rs, ``init_producer``), so
  egress cannot read its marker and sends nothing more. Real Kafka completes or aborts such a
  transaction. The test then ends as an expected failure (xfail) that says so, with egress's
  last warning in the figures (``tansu_undecided_transaction``).
- ListOffsets "latest" lags: one past the base offset of the batch object with the newest S3
  modification time (whole seconds, ties to the lowest offset). Fetch reports the right high
  watermark.
- A consumer whose ``fetch.wait.max.ms`` is shorter than Tansu's read of the partition (a
  listing of every batch object and a GET of each) gets empty fetches for good once the
  partition has a few hundred records: the Kafka log (default 10 ms) and the output reader
  run here with FETCH_WAIT_MS.

Figures: records in and out, lost, duplicated, wrong sums; HTTP calls and their retries; kills
and Tansu's downtime; recovery time (Tansu's restart to the next committed output record);
records/s from the broker's start to the last output record. Tansu on S3 (moto_server in
memory) costs ~105 ms a transaction, so records/s says little of Apache Kafka.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.broker.conftest import BrokerProcess, ServiceProcess
from tests.egress.conftest import check_exactly_once, new_topic, produce, read_output
from tests.kafka import TansuS3
from tests.s3 import S3Server

from .conftest import sized
from .kafka_pipeline import LiveOutput, Model, diagnose, score, set_up

RECORDS = sized(2_000, 20_000)
KILLS = sized(2, 10)
KEYS = 50
PARTITIONS = 4
CUSTOMERS = 4
PAUSE_S = 0.02  # between one customer's calls
# Tansu on S3 answers a fetch whose wait is shorter than its storage read (a listing of the
# partition's batch objects and a GET of each) with no records, again and again: a tailing
# consumer with the Kafka log's default of 10 ms stalls for good (tansu_s3_offsets.py --tail).
FETCH_WAIT_MS = 500
# What a broker whose log failed says before it exits (with status 3, to be restarted).
RESUMED = "the broker starts again in this process"
# What egress says while a transaction that Tansu never decides holds read_committed back.
UNDECIDED = "an undecided transaction of another producer holds read_committed back"
RECOVERY_LIMIT_S = 120.0  # a broker that sends nothing this long after Tansu is back is stuck

pytestmark = [pytest.mark.kafka, pytest.mark.slow, pytest.mark.timeout(sized(600, 3600))]


@pytest.fixture
def tansu_s3(s3: S3Server) -> Iterator[TansuS3]:
    """Tansu on a bucket of its own, for one test (the test kills and restarts it)."""
    t = TansuS3(s3, f"tansu-{uuid.uuid4().hex[:8]}")
    t.start()
    try:
        yield t
    finally:
        t.stop()


def _bucket(kafka: TansuS3, topic: str) -> str:
    """What the bucket holds of ``topic``, for a stuck run: per partition, its watermark.json
    and the offsets of its last batch objects."""
    import boto3

    s3 = boto3.client(
        "s3", endpoint_url=kafka.s3.endpoint, aws_access_key_id="t", aws_secret_access_key="t",
        region_name="us-east-1",
    )  # fmt: skip
    at = f"clusters/tansu_cluster/topics/{topic}/partitions/"
    keys = [
        o["Key"][len(at) :]
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=kafka.bucket, Prefix=at)
        for o in page.get("Contents", [])
    ]
    out = []
    for part in sorted({k.split("/")[0] for k in keys}):
        batches = sorted(
            int(k.split("/")[-1][:20]) for k in keys if k.startswith(part) and k.endswith(".batch")
        )
        mark = s3.get_object(Bucket=kafka.bucket, Key=f"{at}{part}/watermark.json")["Body"]
        out.append(f"{topic}[{int(part)}]: {mark.read()!r}; last batches at {batches[-8:]}")
    return "\n".join(out)


def _order(customer: str, i: int) -> dict[str, object]:
    lines = [{"sku": "tea", "quantity": 1 + i % 3, "unit_price": 4.5}]
    return {"id": f"{customer}-{i}", "customer": customer, "lines": lines}


def _spent(i: int) -> float:
    """A customer's total after its orders 0 to ``i``."""
    return sum((1 + j % 3) * 4.5 for j in range(i + 1))


class Calls:
    """The HTTP load: per customer, its orders one after the other until ``stop`` is set,
    each retried with its idempotency key (a lost answer, a 5xx, a timeout) until answered."""

    def __init__(self, http: httpx.AsyncClient, base: str, run: str) -> None:
        self.http = http
        self.base = base
        self.customers = [f"cust-{run}-{n}" for n in range(CUSTOMERS)]
        self.answers: dict[tuple[str, int], dict[str, Any]] = {}
        self.orders: dict[str, int] = dict.fromkeys(self.customers, 0)
        self.retries = 0
        self.stop = asyncio.Event()

    async def call(self, customer: str, i: int, within: float) -> dict[str, Any]:
        deadline = time.monotonic() + within
        while True:
            why: object
            try:
                r = await self.http.post(
                    f"{self.base}/Customer/{customer}/add_order",
                    json=_order(customer, i),
                    headers={"idempotency-key": f"{customer}-{i}"},
                )
                if r.status_code == 200:
                    answer: dict[str, Any] = r.json()
                    return answer
                assert r.status_code >= 500, f"{customer} order {i}: {r.status_code} {r.text}"
                why = f"{r.status_code} {r.text[:200]}"
            except httpx.HTTPError as e:
                why = repr(e)
            assert time.monotonic() < deadline, f"{customer} order {i}: unanswered: {why}"
            self.retries += 1
            await asyncio.sleep(0.2)

    async def run(self, within: float) -> None:
        async def one(customer: str) -> None:
            while not self.stop.is_set():
                i = self.orders[customer]
                self.answers[customer, i] = await self.call(customer, i, within)
                self.orders[customer] = i + 1
                await asyncio.sleep(PAUSE_S)

        await asyncio.gather(*(one(c) for c in self.customers))

    def check(self) -> None:
        for (customer, i), a in self.answers.items():
            want = (customer, i + 1, _spent(i), f"{customer}-{i}")
            got = (a["customer"], a["orders"], a["spent"], a["last_order"])
            assert got == pytest.approx(want), f"order {i} of {customer} answered {a}"

    async def check_totals(self) -> None:
        """Each customer's totals count each of its answered orders once."""
        for customer, orders in self.orders.items():
            r = await self.http.post(f"{self.base}/Customer/{customer}/totals")
            assert r.status_code == 200, r.text
            totals = r.json()
            assert totals["orders"] == orders, totals
            assert totals["spent"] == pytest.approx(_spent(orders - 1)), totals


@dataclass
class Run:
    """One run's moving parts, for the kill loop and for what a stuck run shows."""

    kafka: TansuS3
    broker: BrokerProcess
    live: LiveOutput
    calls: Calls
    http: httpx.AsyncClient
    log_topic: str | None
    figures: dict[str, Any]

    def alive(self) -> bool:
        return self.broker.proc is not None and self.broker.proc.poll() is None

    def resumed(self) -> list[str]:
        """Why the broker started again in its process, each time (its Kafka log's failure)."""
        text = self.broker.log.read_text(errors="replace")
        return [ln.split("sluice: ", 1)[-1][:200] for ln in text.splitlines() if RESUMED in ln]

    async def wait(self, done: Callable[[], bool], what: str) -> None:
        """Until ``done()``, with RECOVERY_LIMIT_S of no progress at most."""
        if not await self.live.wait(done, alive=self.alive, within=RECOVERY_LIMIT_S):
            text = self.broker.log.read_text(errors="replace")
            warnings = [ln for ln in text.splitlines() if " WARNING sluice." in ln]
            if self.alive() and warnings and UNDECIDED in warnings[-1]:
                self.figures["tansu_undecided_transaction"] = warnings[-1][:300]
                pytest.xfail(f"{what}: Tansu left a transaction undecided (module docstring)")
            raise AssertionError(await self.stuck(what))

    async def stuck(self, what: str) -> str:
        admin = f"http://127.0.0.1:{self.broker.admin}"
        parts = [what, await diagnose(self.http, admin, self.broker.log, self.live)]
        if self.log_topic is not None:
            parts.append(await asyncio.to_thread(_bucket, self.kafka, self.log_topic))
        return "\n".join(parts)

    async def kill_tansu(
        self, rng: random.Random, src: str, chunks: list[list[Any]]
    ) -> dict[str, Any]:
        """The input in chunks: produce one, SIGKILL Tansu once the committed output is at a
        random point of it, restart Tansu after a pause, produce the next; returns the
        figures of the kills."""
        down, recovery, answered, out_at = [], [], [], []
        produced = 0
        for k, chunk in enumerate(chunks):
            await asyncio.to_thread(produce, self.kafka, src, chunk, **{"enable.idempotence": True})
            target = produced + round(len(chunk) * rng.uniform(0.1, 0.7))
            produced += len(chunk)
            if k == len(chunks) - 1:
                break
            await self.wait(self.live.count(target), f"kill {k}: stuck")
            await asyncio.sleep(rng.uniform(0.0, 0.3))
            answered.append(len(self.calls.answers))
            self.kafka.kill()
            seen = len(self.live.records)
            out_at.append(seen)
            pause = rng.uniform(0.5, 3.0)
            await asyncio.sleep(pause)
            await asyncio.to_thread(self.kafka.start)
            restarted = time.monotonic()
            down.append(round(pause, 2))
            # (The last transaction before the kill may have carried the rest of the chunk.)
            more = self.live.count(min(seen + 1, produced))
            await self.wait(more, f"kill {k}: no output after the restart")
            if seen < produced:
                recovery.append(time.monotonic() - restarted)
        return {
            "kills": len(chunks) - 1,
            "tansu_down_s": down,
            "output_at_kills": out_at,
            "http_answered_at_kills": answered,
            "recovery_s_median": round(statistics.median(recovery), 2) if recovery else None,
            "recovery_s_max": round(max(recovery), 2) if recovery else None,
        }


@pytest.mark.parametrize("log", ["embedded", "kafka-log"])
async def test_tansu_on_s3_killed_under_load_loses_nothing(
    log: str,
    tansu_s3: TansuS3,
    tmp_path: Path,
    egress_services: ServiceProcess,
    rng: random.Random,
    figures: dict[str, Any],
) -> None:
    kafka = tansu_s3
    run = f"{rng.getrandbits(32):08x}"
    src, out = new_topic(kafka, PARTITIONS), new_topic(kafka, PARTITIONS)
    model = Model()
    keys = [f"loss-{run}-{k}".encode() for k in range(KEYS)]
    inputs = model.more(rng, RECORDS, keys)
    size = -(-RECORDS // (KILLS + 1))
    chunks = [inputs[n : n + size] for n in range(0, RECORDS, size)]
    log_topic = f"log-{run}" if log == "kafka-log" else None
    flags: tuple[str, ...] = ()
    if log_topic is not None:
        flags = ("--log", f"kafka://{kafka.bootstrap}/{log_topic}",
                 "--log-property", f"fetch.wait.max.ms={FETCH_WAIT_MS}")  # fmt: skip
    broker = BrokerProcess(tmp_path / "data", *flags)
    admin = f"http://127.0.0.1:{broker.admin}"
    figures.update(
        log=log, records_in=RECORDS, keys=KEYS, partitions=PARTITIONS, customers=CUSTOMERS,
        tansu_storage="s3 (moto_server)",
    )  # fmt: skip
    try:
        with (
            ServiceProcess("examples.orders.service") as orders,
            LiveOutput(kafka, out, fetch_wait_ms=FETCH_WAIT_MS) as live,
        ):
            async with httpx.AsyncClient(timeout=30) as c:
                started = time.monotonic()
                await asyncio.to_thread(broker.start)
                assert broker.proc is not None
                pid = broker.proc.pid
                r = await c.post(f"{admin}/deployments", json={"uri": orders.uri})
                assert r.status_code in (200, 201), r.text
                await set_up(
                    c, admin, egress_services.uri, kafka,
                    src=src, output_topic=out, name="loss", max_in_flight="500",
                )  # fmt: skip
                calls = Calls(c, f"http://127.0.0.1:{broker.ingress}", run)
                http = asyncio.ensure_future(calls.run(within=RECOVERY_LIMIT_S))
                it = Run(kafka, broker, live, calls, c, log_topic, figures)
                figures.update(await it.kill_tansu(rng, src, chunks))
                await it.wait(live.count(RECORDS), "not every output")
                figures["records_per_s"] = round(RECORDS / (time.monotonic() - started))
                calls.stop.set()
                await http
                figures.update(http_calls=len(calls.answers), http_retries=calls.retries)
                calls.check()
                await calls.check_totals()
                health = await c.get(f"{admin}/health")
                assert health.status_code == 200, health.text
            got = await asyncio.to_thread(read_output, kafka, out, RECORDS, 60)
            figures.update(score(got, model))
            check_exactly_once(got, model.keys)
            assert figures["wrong_sums"] == 0, "a key's count or running sum differs from the model"
            figures["broker_resumed_in_process"] = it.resumed()
            # It resumed on its own: the process that started is the one that finished.
            assert it.alive() and broker.proc.pid == pid, "the broker process was replaced"
    finally:
        broker.stop()
    text = broker.log.read_text(errors="replace")
    assert "Traceback" not in text, text[-3000:]
