"""Test 12: the disk fails under the broker (issue 10's failure policy).

The last test makes RocksDB fail a write while Kafka records are ingested (the processor
used to skip the batch, and the next one moved the position past it).

A failed fsync (EIO, injected at the log's sync) and a full disk (ENOSPC, a real tmpfs
filled up while the broker works) must never be retried as if the data were safe. While
idempotent HTTP adds arrive, the broker meets the fault; then every request still waiting
gets a 503 with Retry-After, the health check turns 503, and the process exits with
status 3 for its supervisor to restart it. The test is that supervisor: it restarts the
broker (with the fault gone), sends every request that did not get its 200 again with the
same idempotency key, and checks that each add counted exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from sluice.broker.errors import EXIT_FATAL
from tests.broker.conftest import BrokerProcess, ServiceProcess
from tests.ingress_kafka.conftest import deploy_with_kafka, new_topic, produce
from tests.kafka import Tansu

from .conftest import sized

REQUESTS = sized(300, 3000)
KEYS = 8


@contextlib.contextmanager
def small_tmpfs(where: Path, size_mb: int) -> Iterator[Path]:
    """A tmpfs of ``size_mb`` mounted at ``where`` (the tests run as root on these
    machines; without root this fails and says so)."""
    where.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(where)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert r.returncode == 0, f"this test mounts a tmpfs and needs root: {r.stderr.strip()}"
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(directory: Path) -> Path:
    """Fill the file system of ``directory`` to the last byte; return the filler file."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        for size in (1 << 20, 4096, 1):
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * size)
    finally:
        os.close(fd)
    return filler


async def _add(c: httpx.AsyncClient, ingress: str, ikey: str, key: str, delta: int) -> Any:
    try:
        r = await c.post(
            f"{ingress}/Counter/{key}/add",
            content=str(delta).encode(),
            headers={"idempotency-key": ikey, "content-type": "application/json"},
        )
    except httpx.HTTPError as e:
        return type(e).__name__  # the process exited under the request
    return r


@pytest.mark.parametrize("fault", ["fsync-eio", "disk-full"])
async def test_a_failing_disk_stops_the_broker_and_a_restart_finishes_everything_once(  # noqa: PLR0915
    fault: str, tmp_path: Path, rng: random.Random, figures: dict[str, Any]
) -> None:
    plan = [
        (f"{fault}-{i}", f"k{rng.randrange(KEYS)}", rng.randint(1, 100)) for i in range(REQUESTS)
    ]
    want: dict[str, int] = {}
    for _, key, delta in plan:
        want[key] = want.get(key, 0) + delta
    figures.update(fault=fault, requests=REQUESTS)
    with contextlib.ExitStack() as stack:
        if fault == "disk-full":
            root = stack.enter_context(small_tmpfs(tmp_path / "disk", 64))
            env = {}
        else:
            root = tmp_path
            env = {"SLUICE_FAULTS": f"log-fsync={rng.randint(20, 60)}"}
        svc = stack.enter_context(ServiceProcess("tests.broker.restate_services"))
        broker = BrokerProcess(root / "data")
        broker.log = tmp_path / "broker.log"  # off the small disk
        broker.start(env)
        ingress = f"http://127.0.0.1:{broker.ingress}"
        admin = f"http://127.0.0.1:{broker.admin}"
        async with httpx.AsyncClient(timeout=30) as c:
            r = await c.post(f"{admin}/deployments", json={"uri": svc.uri, "force": True})
            assert r.status_code == 201, r.text
            acked: dict[str, int] = {}
            refused: list[dict[str, Any]] = []
            others: list[str] = []
            sem = asyncio.Semaphore(16)
            filled = asyncio.Event()

            async def one(i: int, ikey: str, key: str, delta: int) -> None:
                if fault == "disk-full" and i == REQUESTS // 4:
                    await asyncio.to_thread(fill, root)
                    filled.set()
                async with sem:
                    r = await _add(c, ingress, ikey, key, delta)
                if isinstance(r, str):
                    others.append(r)
                elif r.status_code == 200:
                    acked[ikey] = r.json()
                elif r.status_code == 503:
                    assert r.headers.get("retry-after"), r.headers
                    refused.append(r.json())
                else:
                    others.append(f"{r.status_code} {r.text[:200]}")

            await asyncio.gather(*(one(i, *p) for i, p in enumerate(plan)))
            assert broker.proc is not None
            t0 = time.monotonic()
            code = await asyncio.to_thread(broker.proc.wait, 30)
            assert code == EXIT_FATAL, f"exit status {code}; log: {broker.log.read_text()[-3000:]}"
            log = broker.log.read_text(errors="replace")
            assert "sluice: fatal:" in log, log[-3000:]
            assert refused, "no request was answered with a 503"
            assert all("unavailable" in b["message"] for b in refused), refused[:3]
            assert not [o for o in others if o[:3].isdigit()], others[:5]  # no 500s
            figures.update(
                acked_before=len(acked), refused_503=len(refused), cut_off=len(others),
                exit_after_s=round(time.monotonic() - t0, 2),
            )  # fmt: skip

            # The supervisor's part: the fault is gone, restart, send the rest again.
            if fault == "disk-full":
                (root / "filler").unlink()
            broker.start()
            t0 = time.monotonic()
            async with asyncio.timeout(120):
                while True:
                    with contextlib.suppress(httpx.HTTPError):
                        if (await c.get(f"{admin}/health")).status_code == 200:
                            break
                    await asyncio.sleep(0.1)
            for ikey, key, delta in plan:
                for _ in range(100):
                    r = await _add(c, ingress, ikey, key, delta)
                    if not isinstance(r, str) and r.status_code == 200:
                        break
                    await asyncio.sleep(0.2)
                assert not isinstance(r, str) and r.status_code == 200, r
                if ikey in acked:
                    assert r.json() == acked[ikey], f"{ikey} answered differently after restart"
            got = {k: (await c.post(f"{ingress}/Counter/{k}/get")).json() for k in want}
            figures.update(recovery_s=round(time.monotonic() - t0, 2))
            assert got == want, "an add was lost or counted twice"
        broker.stop()
    shutil.rmtree(tmp_path / "disk", ignore_errors=True)


@pytest.mark.kafka
async def test_a_storage_write_error_during_kafka_ingest_loses_no_record(
    kafka: Tansu, tmp_path: Path, rng: random.Random,
    figures: dict[str, Any],
) -> None:  # fmt: skip
    """RocksDB fails a write while Kafka records are being ingested. Before, the processor
    skipped the batch it could not write and the next batch moved the partition's position
    past it: records never invoked, never dead-lettered. Now the broker stops (status 3)
    and after a restart every record of every partition is counted exactly once."""
    topic = new_topic(kafka, 4)
    records, want = [], {}
    for i in range(sized(2000, 20_000)):
        key, v = f"key-{rng.randrange(50)}", rng.randrange(1000)
        count, total = want.get(key, (0, 0))
        want[key] = (count + 1, total + v)
        records.append((key, {"v": v, "i": i}, None))
    produce(kafka, topic, records)
    nth = rng.randint(30, 120)
    figures.update(records=len(records), failing_write=nth)
    broker = BrokerProcess(tmp_path / "data")
    broker.start({"SLUICE_FAULTS": f"storage-write={nth}"})
    admin = f"http://127.0.0.1:{broker.admin}"
    counter = ServiceProcess("tests.ingress_kafka.restate_counter")
    counter.start()
    try:
        async with httpx.AsyncClient(timeout=30) as c:
            await deploy_with_kafka(c, admin, counter.uri, kafka)
            r = await c.post(
                f"{admin}/subscriptions",
                json={"source": f"kafka://local/{topic}", "sink": "service://KafkaCounter/add",
                      "options": {"name": "disk"}},
            )  # fmt: skip
            assert r.status_code == 201, r.text
            assert broker.proc is not None
            code = await asyncio.to_thread(broker.proc.wait, 60)
            log = broker.log.read_text(errors="replace")
            assert code == EXIT_FATAL, f"exit status {code}: {log[-3000:]}"
            assert "writing the tables failed" in log, log[-3000:]

            broker.start()
            # Done: every partition read to its end, and no invocation of the counter left
            # unfinished (the restarted ones included), so a late duplicate would show.
            states: dict[str, dict[str, int]] = {}
            async with asyncio.timeout(150):
                while True:
                    sub = (await c.get(f"{admin}/subscriptions/disk")).json()["status"]
                    read = all(p["lag"] == 0 and p["log_end"] > 0 for p in sub["partitions"])
                    r = await c.get(f"{admin}/invocations", params={"service": "KafkaCounter"})
                    busy = [i for i in r.json()["invocations"] if i["status"] != "completed"]
                    if read and not busy:
                        break
                    await asyncio.sleep(0.5)
            for key in want:
                r = await c.get(f"{admin}/state/KafkaCounter/{key}")
                states[key] = r.json()["state"]
            got = {k: (s.get("count", 0), s.get("sum", 0)) for k, s in states.items()}
            lost = sum(max(want[k][0] - got[k][0], 0) for k in want)
            dup = sum(max(got[k][0] - want[k][0], 0) for k in want)
            figures.update(lost=lost, duplicated=dup)
            assert got == want, f"lost {lost}, duplicated {dup}"
    finally:
        broker.stop()
        counter.stop()
