"""Test 7: the Kafka broker stalls (SIGSTOP for 5 to 15 s) and its connections are reset.

Records flow topic -> virtual object (``Tally.add``) -> output topic through Sluice's egress
while a producer keeps writing input. The test's own Tansu (not the session one: it is the
one being frozen) gets SIGSTOP, a random 5 to 15 s pause, then SIGCONT, several times.
Connections are reset with ``ss -K`` (the kernel's SOCK_DESTROY, as root): every TCP
connection to or from Tansu's port is aborted, both Sluice's (consumer, transactional
producer, marker readers) and the test's own; some resets happen inside a stall, one while
records flow. A TCP proxy was not needed: Tansu keeps advertising its own address, and
restarting Tansu is not an option (it keeps everything in memory).

Asserted: a read_committed reader finds each input exactly once in the output, in per-key
input order, and each key's count runs 1, 2, 3, ... (the object's state is exactly once too);
after each stall, Sluice's output progresses (an egress transaction commits new records)
within 10 s of SIGCONT. Per stall, the figures give the time to the first ingested record,
the first committed egress transaction, and the first new record the reader sees.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from sluice.connectors.kafka import Consumer, Producer, TopicPartitionOffset
from sluice.connectors.kafka._client import OFFSET_BEGINNING
from tests.broker.conftest import BrokerProcess, ServiceProcess
from tests.egress.conftest import Out, check_exactly_once, read_output
from tests.kafka import Tansu

from .conftest import peak_rss_mb, sized
from .kafka_pipeline import set_up

pytestmark = [pytest.mark.kafka, pytest.mark.slow, pytest.mark.timeout(sized(400, 1800))]

STALLS = sized(3, 20)
RATE = 150  # input records per second
KEYS = 100
RECOVERY_S = 10.0


def reset_connections(port: int) -> int:
    """Abort every TCP connection to or from ``port`` (``ss -K``); return how many."""
    out = subprocess.run(
        ["ss", "-K", "-t", "-n", f"( sport = :{port} or dport = :{port} )"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    return sum(1 for line in out.stdout.splitlines()[1:] if line.strip())


def require_sock_destroy() -> None:
    """Fail with a clear message where the kernel cannot destroy sockets (or ss is missing)."""
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        port = srv.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port)) as c:
            srv.accept()[0].close()
            try:
                reset_connections(port)
            except FileNotFoundError:
                pytest.fail("test 7 needs `ss` (iproute2) to reset connections")
            try:
                c.send(b"x")
                c.recv(1)
            except OSError:
                return
    pytest.fail("`ss -K` did not reset a connection: needs root and CONFIG_INET_DIAG_DESTROY")


class Feeder(threading.Thread):
    """Produces ``{"i": n}`` at ``RATE`` per second, keyed by a seeded key, until stopped."""

    def __init__(self, tansu: Tansu, topic: str, keys: list[str]) -> None:
        super().__init__(daemon=True)
        self.producer = Producer({"bootstrap.servers": tansu.bootstrap, "linger.ms": 20})
        self.topic = topic
        self.keys = keys
        self.want: dict[int, bytes] = {}
        self.stop = threading.Event()
        self.times: list[float] = []  # when each record was handed to the producer

    def run(self) -> None:
        start = time.monotonic()
        i = 0
        while not self.stop.is_set():
            wait = start + i / RATE - time.monotonic()
            if wait > 0:
                time.sleep(wait)
                continue
            key = self.keys[i % len(self.keys)].encode()
            self.want[i] = key
            self.times.append(time.monotonic())
            self.producer.produce(self.topic, json.dumps({"i": i}).encode(), key=key)
            i += 1
        self.producer.flush(120)


class Reader(threading.Thread):
    """A read_committed consumer of the output topic; notes when each record arrives."""

    def __init__(self, tansu: Tansu, topic: str) -> None:
        super().__init__(daemon=True)
        self.consumer = Consumer(
            {
                "bootstrap.servers": tansu.bootstrap,
                "group.id": f"stall-reader-{topic}",
                "isolation.level": "read_committed",
                "reconnect.backoff.max.ms": "1000",
            }
        )
        self.topic = topic
        self.out: list[Out] = []
        self.arrivals: list[float] = []
        self.stop = threading.Event()

    def run(self) -> None:
        c = self.consumer
        parts = c.partitions(self.topic) or []
        c.assign([TopicPartitionOffset(self.topic, n, OFFSET_BEGINNING) for n in parts])
        while not self.stop.is_set():
            for m in c.consume(1000, 0.1):
                self.out.append(
                    Out(
                        m.partition, m.offset, m.key,
                        json.loads(m.value) if m.value else None,
                        {k: (v or b"").decode() for k, v in m.headers},
                    )
                )  # fmt: skip
                self.arrivals.append(time.monotonic())
        c.close()


class Progress:
    """Samples the broker's ingest and egress counters every 0.1 s, with their times."""

    def __init__(self, admin: str) -> None:
        self.admin = admin
        self.samples: list[tuple[float, int, int]] = []  # (time, ingested, egress sent)

    async def run(self, c: httpx.AsyncClient) -> None:
        while True:
            try:
                subs = (await c.get(f"{self.admin}/subscriptions/stall", timeout=2)).json()
                eg = (await c.get(f"{self.admin}/egress", timeout=2)).json()
                ingested = sum(p["ingested"] for p in subs["status"]["partitions"])
                sent = sum(w["records_sent"] for w in eg["sinks"])
                self.samples.append((time.monotonic(), ingested, sent))
            except (httpx.HTTPError, KeyError, ValueError):
                pass
            await asyncio.sleep(0.1)

    def first_after(self, t: float, column: int) -> float | None:
        """Seconds from ``t`` to the first sample whose counter is above its value at ``t``."""
        base = None
        for ts, *counts in self.samples:
            if ts <= t:
                base = counts[column]
            elif base is not None and counts[column] > base:
                return round(ts - t, 2)
        return None


def first_arrival_after(arrivals: list[float], t: float) -> float | None:
    later = [a for a in arrivals if a > t]
    return round(min(later) - t, 2) if later else None


async def test_kafka_stalls_and_resets(  # noqa: PLR0915 - one scenario, in order
    tmp_path: Path,
    egress_services: ServiceProcess,
    rng: random.Random,
    figures: dict[str, Any],
) -> None:
    require_sock_destroy()
    tansu = Tansu()
    tansu.start()
    broker = BrokerProcess(tmp_path / "data")
    feeder: Feeder | None = None
    reader: Reader | None = None
    try:
        src, out = f"stall-in-{rng.getrandbits(32):08x}", f"stall-out-{rng.getrandbits(32):08x}"
        tansu.create_topic(src, 4)
        tansu.create_topic(out, 4)
        keys = [f"key-{rng.getrandbits(40):010x}-{k}" for k in range(KEYS)]
        rng.shuffle(keys)
        broker.start()
        admin = f"http://127.0.0.1:{broker.admin}"
        async with httpx.AsyncClient(timeout=30) as c:
            await set_up(
                c, admin, egress_services.uri, tansu,
                src=src, name="stall", output_topic=out, max_in_flight="500",
            )  # fmt: skip

            feeder, reader = Feeder(tansu, src, keys), Reader(tansu, out)
            feeder.start()
            reader.start()
            progress = Progress(admin)
            sampler = asyncio.ensure_future(progress.run(c))
            assert tansu.proc is not None
            pid = tansu.proc.pid
            # Which stalls reset connections inside them: at least one, seeded.
            reset_in = {rng.randrange(STALLS)} | {n for n in range(STALLS) if rng.random() < 0.4}
            reset_running_after = rng.randrange(STALLS)
            stalls: list[dict[str, Any]] = []
            resets = 0
            await asyncio.sleep(rng.uniform(3, 5))
            for n in range(STALLS):
                length = rng.uniform(5, 15)
                os.kill(pid, signal.SIGSTOP)
                stopped = time.monotonic()
                killed = 0
                if n in reset_in:
                    await asyncio.sleep(rng.uniform(1, length - 1))
                    killed = reset_connections(tansu.port)
                    resets += 1
                await asyncio.sleep(max(0.0, stopped + length - time.monotonic()))
                os.kill(pid, signal.SIGCONT)
                resumed = time.monotonic()
                await asyncio.sleep(RECOVERY_S + 2)
                stall = {
                    "stall_s": round(resumed - stopped, 1),
                    "reset_connections": killed if n in reset_in else None,
                    "ingest_resumed_s": progress.first_after(resumed, 0),
                    "egress_resumed_s": progress.first_after(resumed, 1),
                    "reader_resumed_s": first_arrival_after(reader.arrivals, resumed),
                }
                stalls.append(stall)
                print(f"stall {n}: {stall}")
                if n == reset_running_after:
                    reset_connections(tansu.port)
                    resets += 1
                    await asyncio.sleep(rng.uniform(2, 4))
            feeder.stop.set()
            await asyncio.to_thread(feeder.join, 150)
            produced = len(feeder.want)
            # Read back by a fresh reader once every input is out, the broker is quiet and
            # the reader is at the high watermark: a duplicate still on its way is counted.
            # (Not "wait 2 s more": a busy machine can take longer to send it.)
            got = await asyncio.to_thread(read_output, tansu, out, produced, 180)
            reader.stop.set()
            await asyncio.to_thread(reader.join, 30)
            sampler.cancel()
            assert broker.proc is not None
            rss = peak_rss_mb(broker.proc.pid)

        seen = {o.value["i"] for o in got}
        recoveries = [s["egress_resumed_s"] for s in stalls]
        figures.update(
            {
                "broker": "tansu 0.6.0, memory storage (figures are upper bounds: no fsync)",
                "reset_method": "ss -K (SOCK_DESTROY) on Tansu's port",
                "records_in": produced,
                "records_out": len(got),
                "lost": len(set(feeder.want) - seen),
                "duplicated": len(got) - len(seen),
                "faults_injected": {"stalls": STALLS, "connection_resets": resets},
                "stalls": stalls,
                "recovery_s_max": max((x for x in recoveries if x is not None), default=None),
                "peak_rss_mb": rss,
            }
        )
        check_exactly_once(got, feeder.want)
        per_key: dict[bytes | None, list[int]] = {}
        for o in sorted(got, key=lambda o: (o.partition, o.offset)):
            per_key.setdefault(o.key, []).append(o.value["n"])
        for key, counts in per_key.items():
            assert counts == list(range(1, len(counts) + 1)), f"{key!r}: {counts[:20]}"
        slow = [
            (n, s) for n, s in enumerate(stalls)
            if s["egress_resumed_s"] is None or s["egress_resumed_s"] > RECOVERY_S
        ]  # fmt: skip
        assert not slow, f"output did not resume within {RECOVERY_S}s of SIGCONT: {slow}"
    finally:
        if tansu.proc is not None and tansu.proc.poll() is None:
            os.kill(tansu.proc.pid, signal.SIGCONT)
        if feeder is not None:
            feeder.stop.set()
        if reader is not None:
            reader.stop.set()
        broker.stop()
        tansu.stop()
    log = broker.log.read_text(errors="replace")
    assert "Traceback" not in log, log[-3000:]
