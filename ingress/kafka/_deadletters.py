"""Dead letters: rows of the ``kafka_dlq`` table, written by the state machine in the same
batch that decided them, produced here, then deleted through the log.

At least once: a crash after the produce and before the deletion is durable sends the row
again on restart; its headers (subscription, topic, partition, offset) identify duplicates.

A row goes to its subscription's cluster, or, once the subscription is deleted, to the
cluster the row names: a dead letter decided is delivered, whatever happens to its
subscription. A row whose cluster is not defined (any more) stays in the table and is tried
again every ``RETRY_UNKNOWN_S``. After a failed delivery the producers are built anew: an
idempotent producer that hit a fatal error refuses everything after it.

On physical partitions each partition keeps its own rows (of the invocations it owns, and of
the records it ingests): a row is named by its partition and its key, and deleted through
that partition's log.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from sluice.broker import faults
from sluice.broker.errors import Fatal
from sluice.broker.partition._records import DeadLettered
from sluice.broker.partition.lifecycle.kafka import H_PARTITION, H_SUBSCRIPTION, DeadLetter
from sluice.connectors.kafka import Producer

if TYPE_CHECKING:
    from collections.abc import Callable

    from sluice.broker.server import Broker
    from sluice.subscriptions._models import KafkaCluster

log = logging.getLogger("sluice.kafka")

RETRY_UNKNOWN_S = 10.0
Row = tuple[int, bytes]  # a kafka_dlq row: (its partition, its key)


class DeadLetterSender:
    def __init__(
        self,
        broker: Broker,
        lookup: Callable[[str, str], KafkaCluster | None],
        count: Callable[[str, int], None],
    ) -> None:
        self.broker = broker
        self._lookup = lookup
        self._count = count
        self._queue: asyncio.Queue[Row] = asyncio.Queue()
        self._producers: dict[str, Producer] = {}
        self._ex = ThreadPoolExecutor(1, thread_name_prefix="kafka-dlq")
        self._task: asyncio.Task[None] | None = None
        self._queued: set[Row] = set()

    def start(self) -> None:
        for part in self.broker.parts:
            for k, _ in part.store.scan("kafka_dlq", b""):
                self.add(part.index, k)
        self._task = asyncio.get_running_loop().create_task(self._run(), name="kafka-dlq")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            # (a task that ended with the broker's failure raises it again here; the broker
            # was told when the task ended: a stop goes on to close the rest)
            with contextlib.suppress(asyncio.CancelledError, Exception, Fatal):
                await self._task
        self._ex.shutdown(wait=False)

    def add(self, partition: int, key: bytes) -> None:
        row = (partition, key)
        if row not in self._queued:
            self._queued.add(row)
            self._queue.put_nowait(row)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            keys = [await self._queue.get()]
            while not self._queue.empty() and len(keys) < 100:
                keys.append(self._queue.get_nowait())
            rows = []
            for k in keys:
                raw = self.broker.parts[k[0]].store.get("kafka_dlq", k[1])
                if raw is not None:
                    rows.append((k, DeadLetter.decode(raw)))
            try:
                done = await loop.run_in_executor(self._ex, self._produce, rows)
            except Exception as e:
                log.warning("dead-letter delivery failed (%s); retrying in 2s", e)
                await loop.run_in_executor(self._ex, self._close_producers)
                await asyncio.sleep(2.0)
                for k in keys:
                    self._queue.put_nowait(k)
                continue
            for k in keys:
                self._queued.discard(k)
            left = {k for k, _ in rows} - {k for k, _ in done}
            for k in left:  # (no cluster to send it to, now)
                loop.call_later(RETRY_UNKNOWN_S, self.add, *k)
            if done:
                for part in {k[0] for k, _ in done}:
                    sent = [k[1] for k, _ in done if k[0] == part]
                    self.broker.submit(DeadLettered(keys=sent), self.broker.parts[part])
                for _, row in done:
                    h = {x.key: x.value for x in row.headers}
                    try:
                        part = int(h.get(H_PARTITION, "-1"))
                    except ValueError:
                        part = -1
                    self._count(h.get(H_SUBSCRIPTION, ""), part)

    def _produce(self, rows: list[tuple[Row, DeadLetter]]) -> list[tuple[Row, DeadLetter]]:
        faults.check("dead-letter-produce")
        done = []
        used: set[str] = set()
        for k, row in rows:
            sub_name = next((h.value for h in row.headers if h.key == H_SUBSCRIPTION), "")
            cluster = self._lookup(sub_name, row.cluster)
            if cluster is None:
                log.warning(
                    "dead letter of subscription %r: cluster %r is not defined; kept in the"
                    " table, tried again in %gs",
                    sub_name, row.cluster, RETRY_UNKNOWN_S,
                )  # fmt: skip
                continue
            prod = self._producers.get(cluster.name)
            if prod is None:
                prod = Producer({**cluster.properties, "message.max.bytes": 64 * 1024 * 1024})
                self._producers[cluster.name] = prod
            prod.produce(
                row.topic,
                row.value,
                key=row.key,
                headers=[(h.key, h.value.encode()) for h in row.headers],
            )
            used.add(cluster.name)
            done.append((k, row))
        for name in used:
            self._producers[name].flush(30.0)
        return done

    def _close_producers(self) -> None:
        producers, self._producers = self._producers, {}
        for prod in producers.values():
            with contextlib.suppress(Exception):
                prod.close()
