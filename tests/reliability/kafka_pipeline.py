"""The pipeline of the Kafka kill tests (2 and 3): topic → ``Tally`` virtual object → topic.

``Tally.add`` (tests/egress/services.py) counts each key's records and keeps a running sum of
their ``v`` in its state, and returns both; the subscription's output topic takes the result.
``Model`` says what each input must come out as; ``LiveOutput`` counts committed output
records while the broker runs, so that a test can kill on progress and time the recovery.
The final verdict always comes from a fresh ``read_output`` reader.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from sluice.connectors.kafka import Consumer, TopicPartitionOffset
from sluice.connectors.kafka._client import OFFSET_BEGINNING
from tests.egress.conftest import Out
from tests.ingress_kafka.conftest import deploy_with_kafka
from tests.kafka import Tansu


@dataclass
class Model:
    """Inputs in production order and, per input, what Tally must emit: (count, running sum)."""

    keys: dict[int, bytes] = field(default_factory=dict)
    want: dict[int, tuple[int, int]] = field(default_factory=dict)
    _per_key: dict[bytes, tuple[int, int]] = field(default_factory=dict)

    def more(
        self, rng: random.Random, count: int, keys: list[bytes]
    ) -> list[tuple[bytes, dict[str, int], None]]:
        """``count`` new inputs (unique ``i``) as (key, value, partition) for ``produce``."""
        out = []
        for _ in range(count):
            i, key, v = len(self.keys), rng.choice(keys), rng.randrange(1000)
            n, total = self._per_key.get(key, (0, 0))
            self._per_key[key] = self.want[i] = (n + 1, total + v)
            self.keys[i] = key
            out.append((key, {"i": i, "v": v}, None))
        return out


def score(out: list[Out], model: Model) -> dict[str, int]:
    """Figures of an output against the model: records out, lost, duplicated, and outputs
    whose count or running sum differ from the model's (state applied twice or skipped)."""
    seen = Counter(o.value["i"] for o in out)
    return {
        "records_out": len(out),
        "lost": sum(1 for i in model.keys if i not in seen),
        "duplicated": sum(n - 1 for n in seen.values()),
        "wrong_sums": sum(
            1 for o in out if (o.value["n"], o.value["sum"]) != model.want.get(o.value["i"])
        ),
    }


async def set_up(
    c: httpx.AsyncClient, admin: str, service_uri: str, kafka: Tansu, **sub: str
) -> None:
    """Register the Tally service, the Kafka cluster and one subscription (``sub``: its
    source topic ``src``, ``output_topic`` and other options)."""
    await deploy_with_kafka(c, admin, service_uri, kafka, http1=True)
    src = sub.pop("src")
    r = await c.post(
        f"{admin}/subscriptions",
        json={"source": f"kafka://local/{src}", "sink": "service://Tally/add", "options": sub},
    )
    assert r.status_code == 201, r.text


async def diagnose(c: httpx.AsyncClient, admin: str, log: Path, live: LiveOutput) -> str:
    """What a stuck run shows: output read so far, the broker's egress and consumer state,
    the tail of its log."""
    parts = [f"output read: {len(live.records)}, highest offsets {live.high}"]
    for path in ("/egress", "/subscriptions"):
        try:
            parts.append(f"{path}: {(await c.get(admin + path)).text[:2000]}")
        except httpx.HTTPError as e:
            parts.append(f"{path}: {e!r}")
    tail = await asyncio.to_thread(log.read_text, errors="replace")
    return "\n".join([*parts, tail[-3000:]])


class LiveOutput:
    """Reads an output topic with read_committed in a thread while the test runs: ``records``
    grows as egress transactions commit. Use it as a context manager."""

    def __init__(self, kafka: Tansu, topic: str, *, fetch_wait_ms: int = 20) -> None:
        self.kafka = kafka
        self.topic = topic
        self.fetch_wait_ms = fetch_wait_ms
        self.records: list[Out] = []
        self.high: dict[int, int] = {}  # per partition, the highest offset read
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, name=f"live-{topic}", daemon=True)
        self._error: BaseException | None = None

    def __enter__(self) -> LiveOutput:
        self._thread.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self._stop.set()
        self._thread.join(10)

    def _read(self) -> None:
        c = Consumer(
            {
                "bootstrap.servers": self.kafka.bootstrap,
                "group.id": "reliability-live-output",
                "isolation.level": "read_committed",
                "fetch.wait.max.ms": str(self.fetch_wait_ms),
            }
        )
        try:
            parts = c.partitions(self.topic) or []
            c.assign([TopicPartitionOffset(self.topic, n, OFFSET_BEGINNING) for n in parts])
            while not self._stop.is_set():
                msgs = c.consume(1000, 0.05)
                for m in msgs:
                    self.records.append(Out.of(m))
                    self.high[m.partition] = max(self.high.get(m.partition, -1), m.offset)
        except BaseException as e:  # surfaced by wait(): a dead reader must not look idle
            self._error = e
        finally:
            c.close()

    def ends(self) -> dict[int, int]:
        """The topic's end offset per partition now (asked of Kafka, not of the reader)."""
        c = Consumer({"bootstrap.servers": self.kafka.bootstrap, "group.id": "reliability-ends"})
        try:
            return {n: c.watermarks(self.topic, n)[1] for n in c.partitions(self.topic) or []}
        finally:
            c.close()

    def count(self, n: int) -> Callable[[], bool]:
        """A condition for ``wait``: at least ``n`` records read."""
        return lambda: len(self.records) >= n

    def past(self, ends: dict[int, int]) -> Callable[[], bool]:
        """A condition for ``wait``: a record at or past ``ends`` (from ``ends()``) was read,
        that is one committed after ``ends`` was taken."""
        return lambda: any(self.high.get(n, -1) >= end for n, end in ends.items())

    async def wait(
        self,
        *done: Callable[[], bool],
        alive: Callable[[], bool] | None = None,
        within: float = 60.0,
    ) -> bool:
        """Until one of the ``done`` conditions holds (True), or ``alive()`` turns false or
        ``within`` seconds pass (False)."""
        deadline = time.monotonic() + within
        while not any(d() for d in done):
            if self._error is not None:
                raise RuntimeError("the output reader failed") from self._error
            if time.monotonic() > deadline or (alive is not None and not alive()):
                return False
            await asyncio.sleep(0.01)
        return True
