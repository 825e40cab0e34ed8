"""Test 6: a torn tail of the log and deleted derived tables.

The broker is SIGKILLed in the middle of a stream of counter increments; then, while it is
stopped, the newest log segment gets a torn tail and the RocksDB tables are deleted. The
broker must restart, rebuild every table from the log alone, and keep every request that was
acknowledged (200) before the kill; a replay of the same log with and without the old tables
must give identical tables (invariant 2: the state machine is deterministic).

On the Kafka log there is no file to tear: the whole data directory is deleted instead (the
disk is lost), and the broker rebuilds everything from the Kafka topic.
"""

from __future__ import annotations

import asyncio
import random
import shutil
import struct
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from sluice.broker.config import BrokerSettings
from sluice.broker.ids import Lsn
from sluice.broker.log import EmbeddedLog, KafkaLog, KafkaLogAddress, Log, LogCorrupted, Record
from sluice.broker.partition._context import Config, RetryPolicy
from sluice.broker.partition.processor import Processor
from sluice.broker.partition.state_machine import StateMachine
from sluice.broker.schema import Registry
from sluice.broker.storage import COLUMN_FAMILIES, RocksDBStore
from tests.broker.conftest import BrokerProcess, Client, ServiceProcess
from tests.conftest import ServerLog, running_broker
from tests.reliability.conftest import sized

ROUNDS = sized(3, 30)
REQUESTS = 300  # per round
KEYS = 24
CONCURRENCY = 40


def _frames(path: Path) -> list[tuple[int, int]]:
    """(offset, length) of each whole frame in a segment: 24-byte header, then the payload."""
    data = path.read_bytes()
    out, pos = [], 0
    while pos + 24 <= len(data):
        length, crc = struct.unpack_from(">II", data, pos)
        end = pos + 24 + length
        if end > len(data) or zlib.crc32(data[pos + 8 : end]) != crc:
            break
        out.append((pos, end - pos))
        pos = end
    return out


def tear_tail(segment: Path, rng: random.Random) -> dict[str, Any]:
    """Give the newest segment the tail a crash in the middle of a write leaves.

    Cutting into a frame that was fsync'd would destroy an acknowledged entry, which no log
    survives; a crash only ever tears the frame being written. So append the next frame (a
    copy of the last payload under the next LSN), then truncate its last bytes, or flip a
    byte in it (a sector written half): both must be cut off on open.
    """
    frames = _frames(segment)
    off, length = frames[-1]
    data = segment.read_bytes()
    last_lsn, ts = struct.unpack_from(">QQ", data, off + 8)
    payload = data[off + 24 : off + length]
    body = struct.pack(">QQ", last_lsn + 1, ts) + payload
    frame = struct.pack(">II", len(payload), zlib.crc32(body)) + body
    kind = rng.choice(["truncated", "corrupted"])
    if kind == "truncated":
        cut = rng.randint(1, len(frame) - 1)
        torn = frame[: len(frame) - cut]
    else:
        i = rng.randrange(len(frame))
        torn = frame[:i] + bytes([frame[i] ^ 0xFF]) + frame[i + 1 :]
    with open(segment, "ab") as f:
        f.write(torn)
    return {"kind": kind, "torn_bytes": len(torn), "frames_before": len(frames)}


class ReplayOnly(Log):
    """A Kafka log read for a replay, never written: the recovery's own commands (restarts of
    running invocations) must not reach the topic the real broker goes on with."""

    def __init__(self, flags: tuple[str, ...]) -> None:
        where = KafkaLogAddress.parse(flags[1])
        self._log = KafkaLog({"bootstrap.servers": where.bootstrap}, where.topic)

    def open(self, on_durable: Any, *, on_failed: Any = None) -> None:
        pass

    def append(self, payload: bytes, timestamp: int) -> Lsn:
        return self.tail

    def read_from(self, lsn: Lsn) -> Iterator[Record]:
        return self._log.read_from(lsn)

    def trim(self, lsn: Lsn) -> int:
        return 0

    @property
    def tail(self) -> Lsn:
        return self._log.tail

    async def close(self) -> None:
        pass


async def recovered_tables(
    data: Path, log_flags: tuple[str, ...] = ()
) -> dict[str, dict[bytes, bytes]]:
    """Open a copy of a data directory the way the broker does, replay the log, dump tables."""
    settings = BrokerSettings(data_dir=data)
    store = RocksDBStore(data / "db")
    log = ReplayOnly(log_flags) if log_flags else EmbeddedLog(data / "log", fsync=False)
    sm = StateMachine(
        Registry(),
        Config(
            partitions=settings.partitions,
            retry=RetryPolicy(initial_ms=50, factor=2.0, max_interval_ms=10_000, max_attempts=100),
            idempotency_retention_ms=86_400_000,
            workflow_retention_ms=86_400_000,
            completion_retention_ms=86_400_000,
        ),
    )
    proc = Processor(log, store, sm, lambda _actions: None)
    proc.recover()  # its restart commands go to the log buffer, not the tables
    tables = {cf: dict(store.scan(cf, b"")) for cf in COLUMN_FAMILIES}
    store.close()
    await log.close()
    return tables


async def test_torn_tail_and_deleted_tables(  # noqa: PLR0915
    tmp_path: Path, rng: random.Random, figures: dict[str, Any], server_log: ServerLog
) -> None:
    run = f"{rng.getrandbits(32):08x}"
    keys = [f"torn-{run}-{i}" for i in range(KEYS)]
    flags = server_log.flags()
    plans = [
        [(f"{run}-{r}-{i}", rng.choice(keys), rng.randint(1, 1000)) for i in range(REQUESTS)]
        for r in range(ROUNDS)
    ]
    by_ikey = {p[0]: p for plan in plans for p in plan}
    figures.update(records_in=REQUESTS * ROUNDS, faults_injected=0, lost=0, tears=[])
    figures.update(recovery_s=[], acked_before_kill=[])

    svc = ServiceProcess("tests.broker.restate_services")
    svc.start()
    data = tmp_path / "data"
    broker = BrokerProcess(data, *flags)
    broker.start()
    acked: dict[str, int] = {}  # idempotency key -> the counter value it answered
    limits = httpx.Limits(max_connections=CONCURRENCY)
    sem = asyncio.Semaphore(CONCURRENCY)  # requests in flight, across rounds

    async def post(c: httpx.AsyncClient, ikey: str) -> httpx.Response:
        _, key, delta = by_ikey[ikey]
        return await c.post(
            f"http://127.0.0.1:{broker.ingress}/Counter/{key}/add",
            content=str(delta).encode(),
            headers={"idempotency-key": ikey, "content-type": "application/json"},
        )

    async def until_ok(c: httpx.AsyncClient, ikey: str) -> int:
        while True:
            try:
                r = await post(c, ikey)
                if r.status_code == 200:
                    return int(r.json())
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.05)

    try:
        async with httpx.AsyncClient(timeout=60, limits=limits) as c:
            r = await c.post(f"http://127.0.0.1:{broker.admin}/deployments", json={"uri": svc.uri})
            assert r.status_code == 201, r.text
            for rnd, plan in enumerate(plans):
                kill_at = len(acked) + rng.randint(REQUESTS // 4, REQUESTS // 2)
                killed = asyncio.Event()

                async def add(
                    ikey: str, kill_at: int = kill_at, killed: asyncio.Event = killed
                ) -> None:
                    async with sem:
                        if killed.is_set():
                            return
                        try:
                            r = await post(c, ikey)
                        except httpx.HTTPError:
                            return
                        if r.status_code == 200 and not killed.is_set():
                            acked[ikey] = int(r.json())
                            if len(acked) >= kill_at:
                                broker.kill()
                                killed.set()

                await asyncio.gather(*(add(p[0]) for p in plan))
                assert killed.is_set(), "the load finished before the kill"
                figures["acked_before_kill"].append(len(acked))
                if not flags:
                    segment = sorted((data / "log").glob("*.seg"))[-1]
                    figures["tears"].append(tear_tail(segment, rng))
                figures["faults_injected"] += 3 if not flags else 2  # SIGKILL, tear, tables

                # Replay the log with the tables as the kill left them and with none at all.
                for name in ("kept", "rebuilt"):
                    shutil.copytree(data, tmp_path / f"{name}-{rnd}")
                shutil.rmtree(tmp_path / f"rebuilt-{rnd}" / "db")
                kept = await recovered_tables(tmp_path / f"kept-{rnd}", flags)
                rebuilt = await recovered_tables(tmp_path / f"rebuilt-{rnd}", flags)
                figures["table_rows"] = {cf: len(rows) for cf, rows in kept.items()}
                for cf in COLUMN_FAMILIES:
                    assert rebuilt[cf] == kept[cf], f"round {rnd}: table {cf} differs when rebuilt"
                assert kept["journal"] or kept["status"], "the comparison saw empty tables"

                # The real broker, on the torn log with its tables deleted (on the Kafka log:
                # with its whole data directory deleted).
                shutil.rmtree(data / "db" if not flags else data)
                t0 = time.monotonic()
                await asyncio.to_thread(broker.start)
                await until_ok(c, next(iter(acked)))
                figures["recovery_s"].append(round(time.monotonic() - t0, 3))

                # Every request acknowledged so far answers its original result again; a lost
                # one would run anew and answer a different total.
                async def check(ikey: str) -> int:
                    async with sem:
                        return await until_ok(c, ikey)

                answers = await asyncio.gather(*(check(k) for k in acked))
                lost = sum(a != acked[k] for k, a in zip(acked, answers, strict=True))
                figures["lost"] += lost
                assert lost == 0, f"round {rnd}: {lost} acknowledged increments were lost"
                # Requests without an answer before the kill: retried (same key) to the end.
                for k, a in zip(
                    [p[0] for p in plan if p[0] not in acked],
                    await asyncio.gather(*(check(p[0]) for p in plan if p[0] not in acked)),
                    strict=True,
                ):
                    acked[k] = a

            totals: dict[str, int] = {}
            for plan in plans:
                for _, key, delta in plan:
                    totals[key] = totals.get(key, 0) + delta
            got = {}
            for key in keys:
                r = await c.post(f"http://127.0.0.1:{broker.ingress}/Counter/{key}/get")
                got[key] = int(r.json())
            figures["duplicated"] = sum(1 for k in keys if got[k] > totals[k])
            figures["missing_sums"] = sum(1 for k in keys if got[k] < totals[k])
            figures["records_out"] = len(acked)
            assert got == totals, "counters differ from the sum of all increments"
    finally:
        err = broker.stop()
        svc.stop()
    assert "Traceback" not in err, err[-3000:]


async def test_deleted_tables_after_a_trim_refuse_to_start(
    tmp_path: Path, figures: dict[str, Any]
) -> None:
    """Tables rebuild from the log only while the log still holds every entry: once a
    checkpoint trimmed it, deleting the tables must stop the broker with a clear error
    instead of starting from a partial log (silently losing what the trimmed part held)."""
    svc = ServiceProcess("tests.broker.restate_services")
    svc.start()
    data = tmp_path / "d"
    try:
        async with running_broker(data, log_segment_bytes=4096) as b, Client(b) as c:
            await c.register(svc.uri)
            for _ in range(40):
                await c.call("/Counter/trimmed/add", 1)
            figures["segments_trimmed"] = await b.checkpoint()
            assert figures["segments_trimmed"] > 0
        shutil.rmtree(data / "db")
        figures["faults_injected"] = 1
        try:
            async with running_broker(data, log_segment_bytes=4096) as b2, Client(b2) as c2:
                value = (await c2.call("/Counter/trimmed/get")).json()
        except LogCorrupted as e:
            figures["refused_with"] = str(e)
            assert "trim" in str(e)
        else:
            figures["counter_after_restart"] = value
            raise AssertionError(f"started on a trimmed log without tables: counter {value}")
    finally:
        svc.stop()
