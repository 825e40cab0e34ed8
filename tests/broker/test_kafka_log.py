"""The log on Kafka (broker/log/_kafka.py), against Tansu: records are applied once Kafka holds
them (a writer's own on their acknowledgement, others' once read back), each once, in offset
order, and replayed the same after a restart; foreign topics and partition counts that do not
match are refused; corrupt tables are rebuilt from the log, and snapshots to an S3 that is down
are retried. A broker that loses its whole data directory under load and finishes from the
Kafka log alone: tests/reliability/test_disk_loss.py."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from sluice.broker.ids import Lsn
from sluice.broker.log import KafkaLog, KafkaLogError, Record, ensure_topic
from sluice.connectors.kafka import Producer
from tests.broker.conftest import (
    ROOT,
    BrokerProcess,
    ServiceProcess,
    free_port,
    stop_process,
    wait_port,
)
from tests.kafka import Tansu
from tests.s3 import S3Server


def _topic() -> str:
    return f"log-{uuid.uuid4().hex[:8]}"


async def test_appends_are_applied_in_offset_order_and_replayed_after_a_restart(
    kafka: Tansu,
) -> None:
    props = {"bootstrap.servers": kafka.bootstrap}
    topic = _topic()
    ensure_topic(props, topic, 2)
    log = KafkaLog(props, topic, partition=1)
    assert list(log.read_from(Lsn(1))) == []
    got: list[Record] = []
    done = asyncio.Event()

    def on_durable(records: list[Record]) -> None:
        got.extend(records)
        if len(got) >= 500:
            done.set()

    log.open(on_durable)
    for i in range(500):
        log.append(f"r{i}".encode(), 1_700_000_000_000 + i)
    await asyncio.wait_for(done.wait(), 30)
    await log.close()
    assert [r.lsn for r in got] == list(range(1, 501)), "LSN = offset + 1, no gap, no double"
    assert [r.payload for r in got] == [f"r{i}".encode() for i in range(500)]
    assert [r.timestamp for r in got] == [1_700_000_000_000 + i for i in range(500)]

    again = KafkaLog(props, topic, partition=1)
    assert list(again.read_from(Lsn(1))) == got
    assert [r.lsn for r in again.read_from(Lsn(321))] == list(range(321, 501))


async def test_two_writers_interleaved_apply_every_record_once_in_offset_order(
    kafka: Tansu,
) -> None:
    """Two logs on one partition (two nodes of a cluster) append at once: each applies its own
    records on their acknowledgement and the other's once read back, and both apply the same
    records, each once, in offset order (what a replay reads)."""
    props = {"bootstrap.servers": kafka.bootstrap}
    topic = _topic()
    ensure_topic(props, topic, 1)
    # The first reader's fetches wait (for bytes that do not come) up to 200 ms: its own
    # records are acknowledged before it has read the other's that come before them.
    slow = {**props, "fetch.min.bytes": "10000000", "fetch.wait.max.ms": "200"}
    logs = [KafkaLog(slow, topic), KafkaLog(props, topic)]
    got: list[list[Record]] = [[], []]
    done = [asyncio.Event(), asyncio.Event()]
    total = 2 * 600

    def on_durable(i: int) -> Callable[[list[Record]], None]:
        def apply(records: list[Record]) -> None:
            got[i].extend(records)
            if len(got[i]) >= total:
                done[i].set()

        return apply

    for i, log in enumerate(logs):
        log.open(on_durable(i))
    await asyncio.sleep(0.5)  # (both readers at the end of the partition)
    for burst in range(60):  # bursts of 10, each writer's own acknowledged in between
        for i, log in enumerate(logs):
            for j in range(10):
                log.append(f"w{i}-{burst * 10 + j}".encode(), 1_700_000_000_000 + burst)
        await asyncio.sleep(0.002 * (burst % 4))
    await asyncio.wait_for(asyncio.gather(*(d.wait() for d in done)), 30)
    await asyncio.sleep(0.3)  # (anything applied twice would come in now)
    for log in logs:
        await log.close()
    assert [r.lsn for r in got[0]] == list(range(1, total + 1)), "no gap, no double, in order"
    assert got[1] == got[0], "both writers applied the same records in the same order"
    for i in range(2):
        mine = [r.payload for r in got[0] if r.payload.startswith(f"w{i}-".encode())]
        assert mine == [f"w{i}-{n}".encode() for n in range(600)], "a writer's own order kept"
    assert list(KafkaLog(props, topic).read_from(Lsn(1))) == got[0], "a replay reads the same"


async def test_an_acknowledged_record_waits_for_the_records_before_it(kafka: Tansu) -> None:
    """The order of the two paths into ``on_durable``, with their threads left out: an own
    record acknowledged past the next offset waits for the reader to deliver what comes before
    it, and the reader is asked for the gap; a record is applied once whichever path brings it
    first; offsets left empty (Tansu) are skipped once the reader finds a record past them."""
    props = {"bootstrap.servers": kafka.bootstrap}
    topic = _topic()
    ensure_topic(props, topic, 1)
    log = KafkaLog(props, topic)
    applied: list[list[int]] = []
    failed: list[BaseException] = []
    log._on_durable = lambda records: applied.append([r.lsn for r in records])
    log._on_failed = failed.append

    def rec(lsn: int, payload: bytes = b"") -> Record:
        return Record(Lsn(lsn), 0, payload or f"r{lsn}".encode())

    log._take_in([rec(3), rec(4)], read=False)  # own, acknowledged; 1 and 2 not read yet
    assert applied == [] and log._wanted.is_set(), "the reader is asked for the gap"
    log._take_in([rec(1)], read=True)
    log._take_in([rec(2), rec(3), rec(4), rec(5)], read=True)  # 3, 4: applied on the ack
    log._take_in([rec(5), rec(6)], read=False)  # 5 was read first
    assert applied == [[1], [2, 3, 4, 5], [6]]
    log._take_in([rec(9)], read=False)  # 7 and 8 were left empty
    log._take_in([rec(9)], read=True)
    assert applied[-1] == [9] and not log._early and not failed


def test_a_topic_of_other_records_is_refused(kafka: Tansu) -> None:
    props = {"bootstrap.servers": kafka.bootstrap}
    topic = _topic()
    kafka.create_topic(topic, 1)
    producer = Producer(props)
    producer.produce(topic, key=b"k", value=b"an order, not a log record")
    producer.flush()
    with pytest.raises(KafkaLogError, match="not Sluice's log"):
        KafkaLog(props, topic)


def test_a_log_topic_with_another_partition_count_is_refused(kafka: Tansu) -> None:
    props = {"bootstrap.servers": kafka.bootstrap}
    topic = _topic()
    ensure_topic(props, topic, 4)
    ensure_topic(props, topic, 4)  # the same count: fine, nothing created
    with pytest.raises(KafkaLogError, match="--partitions 4"):
        ensure_topic(props, topic, 8)


def test_a_data_directory_of_another_log_is_refused(kafka: Tansu, tmp_path: Path) -> None:
    embedded = BrokerProcess(tmp_path / "data")
    embedded.start()
    embedded.stop()
    argv = [sys.executable, "-m", "sluice.broker", "server", "--data-dir", str(tmp_path / "data"),
            "--ingress-port", "0", "--admin-port", "0",
            "--log", f"kafka://{kafka.bootstrap}/{_topic()}"]  # fmt: skip
    proc = subprocess.run(argv, check=False, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1, proc.stderr
    assert "holds the tables of the embedded log, not of the log kafka://" in proc.stderr


def _order(customer: str, i: int) -> dict[str, object]:
    lines = [{"sku": "tea", "quantity": 1 + i % 3, "unit_price": 4.5}]
    return {"id": f"{customer}-{i}", "customer": customer, "lines": lines}


def _waiting_broker(tmp_path: Path, kafka: Tansu) -> tuple[subprocess.Popen[bytes], int, Path]:
    """A broker whose Kafka log is not reachable: started, and seen waiting for it."""
    admin, err = free_port(), tmp_path / "broker.log"
    argv = [sys.executable, "-m", "sluice.broker", "server", "--data-dir", str(tmp_path / "d"),
            "--ingress-port", str(free_port()), "--admin-port", str(admin),
            "--log", f"kafka://{kafka.bootstrap}/{_topic()}"]  # fmt: skip
    with open(err, "wb") as f:
        proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=f)
    deadline = time.monotonic() + 60
    while b"waiting for the log" not in err.read_bytes():
        assert proc.poll() is None, err.read_text()
        assert time.monotonic() < deadline, f"no word of waiting: {err.read_text()}"
        time.sleep(0.1)
    return proc, admin, err


def test_a_broker_waits_for_its_kafka_log_and_starts_when_it_answers(tmp_path: Path) -> None:
    kafka = Tansu()  # its port chosen, nothing listening there yet
    proc, admin, err = _waiting_broker(tmp_path, kafka)
    try:
        with pytest.raises(OSError):  # not half-started: nothing listens while it waits
            socket.create_connection(("127.0.0.1", admin), 1).close()
        kafka.start()
        wait_port(admin, proc, timeout=60)
        assert httpx.get(f"http://127.0.0.1:{admin}/health").status_code == 200
    finally:
        stop_process(proc)
        kafka.stop()
    assert proc.returncode == 0, err.read_text()


def test_a_stop_while_waiting_for_the_kafka_log_is_clean(tmp_path: Path) -> None:
    proc, _, err = _waiting_broker(tmp_path, Tansu())
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 0, err.read_text()
    assert "stopped before the broker had started" in err.read_text()


async def _add_orders(http: httpx.AsyncClient, base: str, customer: str, n: int) -> None:
    for i in range(n):
        r = await http.post(
            f"{base}/Customer/{customer}/add_order",
            json=_order(customer, i),
            headers={"idempotency-key": f"{customer}-{i}"},
        )
        assert r.status_code == 200, r.text


async def test_corrupt_tables_are_moved_aside_and_rebuilt_from_the_kafka_log(
    kafka: Tansu, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    broker = BrokerProcess(data, "--log", f"kafka://{kafka.bootstrap}/{_topic()}")
    with ServiceProcess("examples.orders.service") as service:
        broker.start()
        try:
            base = f"http://127.0.0.1:{broker.ingress}"
            async with httpx.AsyncClient(timeout=30) as http:
                r = await http.post(
                    f"http://127.0.0.1:{broker.admin}/deployments", json={"uri": service.uri}
                )
                assert r.status_code in (200, 201), r.text
                await _add_orders(http, base, "c1", 12)
                broker.stop()
                for manifest in (data / "db").glob("MANIFEST-*"):
                    manifest.write_bytes(b"not a RocksDB manifest" * 8)

                broker.start()
                totals = (await http.post(f"{base}/Customer/c1/totals")).json()
                assert totals["orders"] == 12, totals
                await _add_orders(http, base, "c1", 12)  # retried: each counted once
                totals = (await http.post(f"{base}/Customer/c1/totals")).json()
                assert totals["orders"] == 12, totals
        finally:
            stderr = broker.stop()
    assert "the tables are rebuilt from the log: the tables cannot be opened" in stderr, stderr
    assert [p.name.split("-")[0] for p in data.glob("db.corrupt-*")] == ["db.corrupt"]


async def test_snapshots_to_an_unreachable_s3_are_retried_while_the_log_goes_on(
    kafka: Tansu, s3: S3Server, tmp_path: Path
) -> None:
    """S3 is down: requests go on, ``/health`` says why the snapshot failed; once S3 answers
    the next one is taken. Tansu cannot delete records: one warning, and the log keeps every
    record."""
    down = S3Server()  # its port chosen, nothing listening there yet
    bucket = f"snaps-{uuid.uuid4().hex[:8]}"
    flags = ["--log", f"kafka://{kafka.bootstrap}/{_topic()}",
             "--snapshots", f"s3://{bucket}/sluice", "--snapshot-endpoint", down.endpoint,
             "--snapshot-every", "5"]  # fmt: skip
    broker = BrokerProcess(tmp_path / "data", *flags)
    admin = f"http://127.0.0.1:{broker.admin}"

    async def health(
        http: httpx.AsyncClient, until: str, ok: Callable[[dict[str, Any]], bool]
    ) -> dict[str, Any]:
        deadline = time.monotonic() + 90
        while True:
            log = (await http.get(f"{admin}/health")).json()["log"]
            if ok(log):
                return log
            assert time.monotonic() < deadline, f"not {until} in 90 s: {log}"
            await asyncio.sleep(0.5)

    with ServiceProcess("examples.orders.service") as service:
        broker.start(env=s3.env())
        try:
            base = f"http://127.0.0.1:{broker.ingress}"
            async with httpx.AsyncClient(timeout=30) as http:
                r = await http.post(f"{admin}/deployments", json={"uri": service.uri})
                assert r.status_code in (200, 201), r.text
                await _add_orders(http, base, "c1", 10)
                log = await health(http, "failed", lambda log: bool(log["snapshot_error"]))
                assert log["snapshot"] == 0, log
                await _add_orders(http, base, "c2", 5)  # the log goes on meanwhile

                down.start()
                down.create_bucket(bucket)
                try:
                    await health(http, "snapshotted", lambda log: bool(log["snapshot"]))
                    for i in range(3):  # more snapshots: each asks for a trim below the oldest
                        await _add_orders(http, base, f"more{i}", 6)
                        log = await health(
                            http,
                            "snapshotted again",
                            lambda new, seen=log: new["snapshot"] > seen["snapshot"],
                        )
                    assert log["snapshot_error"] is None and log["start"] == 1, log
                    assert down.keys(bucket, "sluice/snap-"), "no snapshot in the bucket"
                finally:
                    down.stop()
        finally:
            stderr = broker.stop()
    assert "taking a snapshot failed" in stderr, stderr[-3000:]
    assert stderr.count("does not delete records") == 1, stderr[-3000:]


def test_the_log_can_be_declared_in_sluice_toml(kafka: Tansu, tmp_path: Path) -> None:
    """``[log]`` in the declarations file, as the flags; a flag given as well wins."""
    topic = _topic()
    config = tmp_path / "sluice.toml"
    config.write_text(
        f'[log]\nurl = "kafka://{kafka.bootstrap}/{topic}"\n'
        f'properties = {{ "client.rack" = "r1" }}\nsnapshots = "{tmp_path / "snaps"}"\n'
        "snapshot_every_records = 7\n"
    )
    broker = BrokerProcess(tmp_path / "data", "--config", str(config), "--snapshot-interval", "9")
    broker.start()
    try:
        log = httpx.get(f"http://127.0.0.1:{broker.admin}/health").json()["log"]
        assert (log["kind"], log["topic"]) == ("kafka", topic), log
        assert log["snapshot"] == 0, "snapshots were not taken up from [log]"
    finally:
        broker.stop()

    config.write_text(f'[log]\nurl = "kafka://{kafka.bootstrap}/{topic}"\nsnapshot_evry = 7\n')
    argv = [sys.executable, "-m", "sluice.broker", "server", "--data-dir", str(tmp_path / "d2"),
            "--ingress-port", "0", "--admin-port", "0", "--config", str(config)]  # fmt: skip
    proc = subprocess.run(argv, check=False, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1, proc.stderr
    assert (
        proc.stderr.strip()
        .splitlines()[-1]
        .endswith(f"{config}:3: log.snapshot_evry: Extra inputs are not permitted")
    ), proc.stderr


async def test_an_interrupted_log_starts_the_broker_again_in_its_process(
    kafka: Tansu, tmp_path: Path
) -> None:
    """Kafka fails one append (injected: ``log-produce``) while idempotent adds are in flight:
    the broker answers what it cannot confirm with 503, starts again in the same process on the
    same ports, and finishes from what the log holds. Each add is counted once, and nobody
    restarted the process."""
    svc = ServiceProcess("tests.broker.restate_services")
    svc.start()
    broker = BrokerProcess(tmp_path / "data", "--log", f"kafka://{kafka.bootstrap}/{_topic()}")
    broker.start({"SLUICE_FAULTS": "log-produce=150"})
    assert broker.proc is not None
    pid = broker.proc.pid
    adds = 400
    try:
        async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=64)) as c:
            r = await c.post(f"http://127.0.0.1:{broker.admin}/deployments", json={"uri": svc.uri})
            assert r.status_code == 201, r.text
            base = f"http://127.0.0.1:{broker.ingress}"
            sem = asyncio.Semaphore(64)

            async def add(i: int) -> int:
                async with sem:
                    while True:
                        try:
                            r = await c.post(
                                f"{base}/Counter/resumed/add",
                                content=b"1",
                                headers={"idempotency-key": f"add-{i}"},
                            )
                            if r.status_code == 200:
                                return int(r.json())
                            assert r.status_code == 503, r.text
                        except httpx.TransportError:  # (between the two brokers, nothing listens)
                            assert broker.proc.poll() is None, "the broker exited"
                        await asyncio.sleep(0.1)

            results = await asyncio.wait_for(asyncio.gather(*map(add, range(adds))), 120)
            assert sorted(results) == list(range(1, adds + 1)), "an add was lost or counted twice"
            r = await c.post(f"{base}/Counter/resumed/get")
            assert int(r.json()) == adds
            health = await c.get(f"http://127.0.0.1:{broker.admin}/health")
            assert health.status_code == 200, health.text
        assert broker.proc.poll() is None and broker.proc.pid == pid, "the process was replaced"
    finally:
        err = broker.stop()
        svc.stop()
    assert "sluice fault: EIO at log-produce" in err, err[-3000:]
    assert err.count("the broker starts again in this process") == 1, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
