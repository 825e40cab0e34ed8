"""One subscription's consumer: Kafka records in, deduplicated KafkaIngest commands out.

    librdkafka (one consumer, its partitions assigned by hand, calls in one thread)
        │ consume()                                   ▲ commit(offset) once durable
        ▼                                             │
    per partition: records ─► KafkaIngest(producer id, offsets) ─► log ─► durable reply

Positions: a partition resumes from the log's own record of it (the ``kafka_dedup`` row,
written in the same batch as the invocations), else from the offset committed to Kafka under
the subscription's group id, else from ``start``. Manual assignment, not a group
subscription: Tansu (the test broker) and Kafka both store offsets for it, and there is no
join (which on Tansu waits for the whole rebalance timeout).

A position that is not in the partition's log is never jumped over in silence
(``auto.offset.reset=error``; Tansu answers such a fetch with no records and a high
watermark below the position, which is checked too):
- below the log start (retention deleted records before they were read): reading resumes
  at the log start, and the records lost are counted (``skipped``), logged with their
  offsets and exported as a metric;
- above the log end, or the topic's id changed (checked at open and every
  ``METADATA_CHECK_S``): the topic was deleted and created again. ``on_topic_reset``
  decides: "restart" raises the partition's epoch in the log (a command with no records,
  durable before anything of the new topic is read; _positions.py) and reads the new topic
  from its start; "stop" stops the subscription, saying why, until it is resumed.
Partitions added to the topic are found by the same check and read from their start.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from sluice import protocol as p
from sluice.broker import faults
from sluice.broker.errors import Fatal
from sluice.broker.partition._positions import KafkaPosition, read_position
from sluice.broker.partition._records import KafkaIngest, KafkaRecord, Kind
from sluice.broker.partition.lifecycle.egress import pack_batches, pack_messages
from sluice.broker.partition.lifecycle.kafka import producer_id
from sluice.connectors.kafka import (
    Consumer,
    KafkaError,
    KafkaMessage,
    PartitionError,
    TopicAdmin,
    TopicPartitionOffset,
)
from sluice.connectors.kafka._client import OFFSET_BEGINNING, OFFSET_END
from sluice.connectors.serde import DecodeError, JsonSerde, RegistryError, Serde, encode_key

if TYPE_CHECKING:
    from collections.abc import Callable

    from sluice.broker.server import Broker
    from sluice.subscriptions._models import (  # (subscriptions imports us)
        KafkaCluster,
        Subscription,
    )

log = logging.getLogger("sluice.kafka")
T = TypeVar("T")

BATCH = 500  # records per consume call
METADATA_CHECK_S = 5.0  # how often the topic's id and partitions are looked at


class _Reopen(Exception):
    """Open the consumer again now (an operator resumed a stopped subscription)."""


@dataclass(slots=True)
class PartitionStats:
    partition: int
    producer: bytes
    durable: int = 0  # the next offset to read after a restart (everything below is in the log)
    high: int = 0  # the partition's log end offset, as last seen
    ingested: int = 0
    dead_lettered: int = 0
    failed: int = 0
    pending: int = 0  # records appended, not yet durable
    paused: bool = False
    epoch: int = 0  # the topic's incarnation under this subscription (_positions.py)
    skipped: int = 0  # records deleted by retention before they were read
    resets: int = 0  # times the topic was found recreated and this partition started over

    @property
    def lag(self) -> int:
        return max(self.high - self.durable, 0)

    def to_json(self) -> dict[str, Any]:
        return {
            "partition": self.partition,
            "position": self.durable,
            "log_end": self.high,
            "lag": self.lag,
            "ingested": self.ingested,
            "dead_lettered": self.dead_lettered,
            "failed": self.failed,
            "skipped": self.skipped,
            "resets": self.resets,
            "epoch": self.epoch,
        }


def outside_log(at: int, lo: int, hi: int) -> tuple[int, str]:
    """A position ``at`` that a partition's log (offsets ``lo`` to ``hi``) does not hold:
    (records deleted before they were read, "") for a retention gap, read on from ``lo``;
    (0, why) for a topic deleted and created again. Never (0, "")."""
    if at < lo:
        return lo - at, ""
    return 0, f"its end {hi} is below the position {at}"


class SubscriptionConsumer:
    def __init__(self, broker: Broker, sub: Subscription, cluster: KafkaCluster, kind: int) -> None:
        self.broker = broker
        self.sub = sub
        self.cluster = cluster
        self.kind = kind
        self.serde: Serde = sub.input_serde(cluster)  # ValueError: see there
        self.partitions: dict[int, PartitionStats] = {}
        self.in_flight = 0  # invocations created and not finished (this process's share)
        self.peak_in_flight = 0  # the most in_flight has been (the bound tests check)
        self.status = "starting"
        self.stalled = ""  # why the records read last wait (the schema registry cannot answer)
        self.halted = ""  # why it stopped (on_topic_reset = "stop"), until resumed
        self.topic_id: str | None = None  # as the cluster reports it (None: no ids)
        self._restart_on_open = False  # resumed after a halt: start over the recreated topic
        self._admin: TopicAdmin | None = None
        self._checked = 0.0  # when the topic's metadata was last compared
        self._paused = sub.paused
        self._consumer: Consumer | None = None
        self._ex = ThreadPoolExecutor(1, thread_name_prefix=f"kafka-{sub.name}")
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._throttled = False
        self.throttles = 0  # how often it stopped reading for lack of room

    # --- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name=f"kafka:{self.sub.name}"
        )

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            # (a task that ended with the broker's failure raises it again here; the broker
            # was told when the task ended: a stop goes on to close the rest)
            with contextlib.suppress(asyncio.CancelledError, Exception, Fatal):
                await self._task
        if self._consumer is not None:
            await self._call(self._consumer.close)
            self._consumer = None
        self._ex.shutdown(wait=False)

    def set_paused(self, paused: bool) -> None:
        self._paused = paused
        self.status = "paused" if paused else "running"
        self._wake.set()

    def resume_halted(self) -> None:
        """An operator resumed the subscription after it stopped on a recreated topic: it
        starts over on the new topic (as on_topic_reset = "restart" would have)."""
        if self.halted:
            self._restart_on_open = True
            self._wake.set()

    def done(self) -> None:
        """One of this subscription's invocations finished."""
        self.in_flight = max(self.in_flight - 1, 0)
        if self._throttled and self.load() <= self.sub.max_in_flight // 2:
            self._wake.set()

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._ex, fn, *args)

    # --- the loop ------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            try:
                await self._open()
                await self._consume()
            except asyncio.CancelledError:
                raise
            except _Reopen:
                pass
            except KafkaError as e:
                self.status = f"error: {e}"
                log.warning("subscription %s: %s; retrying", self.sub.name, e)
            except Exception as e:  # keep the subscription alive; say why it stalls
                self.status = f"error: {e!r}"
                log.exception("subscription %s failed; retrying", self.sub.name)
            if self._consumer is not None:
                c, self._consumer = self._consumer, None
                await self._call(c.close)
            if not self._restart_on_open:
                await asyncio.sleep(2.0)

    async def _open(self) -> None:
        sub = self.sub
        props = {
            **self.cluster.properties,
            **sub.options,
            "group.id": sub.group_id,
            # Bounded prefetch: backpressure must not turn into an unbounded local queue.
            "queued.max.messages.kbytes": str(min(65536, max(4096, sub.max_record_bytes // 256))),
            "queued.min.messages": str(4 * BATCH),
            # When a fetch overfills that queue, librdkafka waits this long before the next
            # one (default 1 s): the queue drains in milliseconds, then reading stalls.
            "fetch.queue.backoff.ms": "10",
            "fetch.message.max.bytes": str(max(1_048_576, sub.max_record_bytes + 65536)),
        }
        # (``start`` is where a partition without a position begins; a position out of the
        # partition's log is reported to Sluice, never jumped over: the module's docstring.)
        props["auto.offset.reset"] = "error"
        self.halted = ""  # (found again below if it still holds)
        self._consumer = consumer = await self._call(Consumer, props)
        self._admin = TopicAdmin(self.cluster.properties)
        parts = await self._call(consumer.partitions, sub.topic)
        if parts is None:
            raise KafkaError(
                f"topic {sub.topic!r} not found on cluster {sub.cluster!r}", retriable=True
            )
        self.topic_id = await self._call(self._topic_id)
        tps = [TopicPartitionOffset(sub.topic, n) for n in parts]
        committed = await self._call(consumer.committed, tps)
        assign = []
        recreated = []
        for n in parts:
            stats = self._stats(n)
            pos = self._position(stats.producer)
            stats.epoch = pos.epoch
            if pos.last >= 0 or pos.epoch:
                offset = pos.last + 1
                if self.topic_id and pos.topic_id and pos.topic_id != self.topic_id:
                    recreated.append(n)
                    continue
            elif n in committed and not sub.ignore_committed:
                offset = committed[n]
            else:
                offset = OFFSET_BEGINNING if sub.start == "earliest" else OFFSET_END
            stats.durable = max(offset, 0)
            assign.append(TopicPartitionOffset(sub.topic, n, offset))
        self._throttled = False
        self._checked = time.monotonic()
        if recreated:
            old = self._position(self.partitions[recreated[0]].producer)
            why = f"its id changed from {old.topic_id} to {self.topic_id}"
            assign += await self._recreated(recreated, why)
        await self._call(consumer.assign, assign)
        if not self.halted:
            self.status = "paused" if self._paused else "running"

    def _position(self, producer: bytes) -> KafkaPosition:
        """The position the log holds for a source partition (in the partition that
        ingests it)."""
        return read_position(self.broker.ingesting(producer).store, producer)

    def _stats(self, n: int) -> PartitionStats:
        stats = self.partitions.get(n)
        if stats is None:
            stats = self.partitions[n] = PartitionStats(
                n, producer_id(self.sub.name, self.sub.topic, n)
            )
        stats.pending = 0
        return stats

    def _topic_id(self) -> str | None:
        assert self._admin is not None
        try:
            return self._admin.topic_id(self.sub.topic)
        except KafkaError as e:  # (a cluster that cannot describe topics: no id check)
            log.debug("subscription %s: no topic id: %s", self.sub.name, e)
            return None

    # --- positions out of the partition's log ---------------------------------------------

    async def _recreated(self, parts: list[int], why: str) -> list[TopicPartitionOffset]:
        """The topic was deleted and created again (``why``): per ``on_topic_reset``, the
        assignments that read these partitions from the new topic's start, or none (the
        subscription stops until resumed)."""
        sub = self.sub
        restart = sub.on_topic_reset == "restart" or self._restart_on_open
        what = f"topic {sub.topic!r} was recreated ({why}; partitions {parts})"
        if not restart:
            self.halted = what
            self.status = (
                f"stopped: {what}; resume the subscription to read the new topic from its start"
            )
            log.error("subscription %s: %s: stopped (on_topic_reset = stop)", sub.name, what)
            return []
        out = []
        for n in parts:
            stats = self.partitions[n]
            epoch = stats.epoch + 1
            cmd = self._ingest(stats, epoch)  # (no records: the epoch, durably)
            wid, fut = self.broker.waiter()
            cmd.waiter = wid
            self.broker.submit(cmd)
            reply = await fut
            if reply.kind != "ok":
                raise KafkaError(f"the log did not take the new epoch: {reply.message}")
            stats.epoch = epoch
            stats.durable = stats.high = 0
            stats.resets += 1
            out.append(TopicPartitionOffset(sub.topic, n, OFFSET_BEGINNING))
        log.warning(
            "subscription %s: %s: reading the new topic from its start (epoch %d)",
            sub.name, what, self.partitions[parts[0]].epoch,
        )  # fmt: skip
        self.halted = ""
        self._restart_on_open = False
        return out

    async def _out_of_range(
        self, errors: list[PartitionError], consumer: Consumer, recreated: dict[int, str]
    ) -> set[int]:
        """Partitions whose position is not in their log: a retention gap (handled here) or
        a recreated topic (added to ``recreated``, by the reason). Returns them all."""
        out = set()
        for e in errors:
            stats = self.partitions.get(e.partition)
            if stats is None or e.topic != self.sub.topic:
                continue
            if e.kind == "unknown":
                raise KafkaError(f"topic {self.sub.topic!r}: {e.message}", retriable=True)
            out.add(e.partition)
            at = e.offset if e.offset >= 0 else stats.durable
            lo, hi = await self._call(consumer.watermarks, self.sub.topic, e.partition)
            gap, recreated_why = outside_log(at, lo, hi)
            if gap:
                stats.skipped += gap
                log.error(
                    "subscription %s: %s[%d]: offsets %d to %d were deleted (retention) before"
                    " Sluice read them: %d records skipped; reading on from %d",
                    self.sub.name, self.sub.topic, e.partition, at, lo - 1, lo - at, lo,
                )  # fmt: skip
                stats.durable = lo
                await self._call(
                    consumer.seek, TopicPartitionOffset(self.sub.topic, e.partition, lo)
                )
            else:
                recreated[e.partition] = recreated_why
        return out

    async def _rewind(self, consumer: Consumer, msgs: list[KafkaMessage]) -> None:
        """Put each partition's position back to the first of ``msgs`` (none submitted)."""
        first: dict[int, int] = {}
        for m in msgs:
            first.setdefault(m.partition, m.offset)
        for n, offset in first.items():
            await self._call(consumer.seek, TopicPartitionOffset(self.sub.topic, n, offset))

    async def _reassign(self, consumer: Consumer, recreated: dict[int, str]) -> None:
        parts = sorted(recreated)
        tps = await self._recreated(parts, recreated[parts[0]])
        for tp in tps:
            await self._call(consumer.seek, tp)
        if not tps:
            await self._call(
                consumer.pause, [TopicPartitionOffset(self.sub.topic, n) for n in parts]
            )

    async def _check_metadata(self, consumer: Consumer) -> None:
        """Every ``METADATA_CHECK_S``: partitions added (read from their start), the topic
        gone (reopen), or its id changed (recreated)."""
        self._checked = time.monotonic()
        parts = await self._call(consumer.partitions, self.sub.topic)
        if parts is None:
            raise KafkaError(f"topic {self.sub.topic!r} is gone", retriable=True)
        ident = await self._call(self._topic_id)
        if ident and self.topic_id and ident != self.topic_id:
            old, self.topic_id = self.topic_id, ident
            await self._reassign(
                consumer, dict.fromkeys(self.partitions, f"its id changed from {old} to {ident}")
            )
            return
        self.topic_id = self.topic_id or ident
        new = [n for n in parts if n not in self.partitions]
        if new:
            for n in new:
                self._stats(n)
            log.warning(
                "subscription %s: topic %r has new partitions %s: reading them from their start",
                self.sub.name, self.sub.topic, new,
            )  # fmt: skip
            await self._call(
                consumer.add,
                [TopicPartitionOffset(self.sub.topic, n, OFFSET_BEGINNING) for n in new],
            )

    def load(self) -> int:
        """Records taken and not finished: appends pending, invocations unfinished."""
        return self.in_flight + sum(s.pending for s in self.partitions.values())

    def work(self) -> int:
        """This subscription's share of the broker's admission count, in invocations: the
        unfinished ones, and records on their way to the log counted as the invocations
        they become (a stream handler's batch of records is one)."""
        per = self.sub.batch_max_records or 1
        return self.in_flight + sum(-(-s.pending // per) for s in self.partitions.values())

    async def _consume(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        sub = self.sub
        while True:
            if self.halted:
                self._wake.clear()
                await self._wake.wait()
                if self._restart_on_open:
                    raise _Reopen
                continue
            if time.monotonic() - self._checked > METADATA_CHECK_S:
                await self._check_metadata(consumer)
                continue
            if self._paused or self.load() >= sub.max_in_flight or self.broker.overload():
                # Stop consuming until there is room, here and in the broker (its admission
                # limit). librdkafka keeps its prefetch queue, bounded by
                # queued.max.messages.kbytes / queued.min.messages, in offset order.
                self._throttled = not self._paused
                self.throttles += self._throttled
                for s in self.partitions.values():
                    s.paused = True
                while self._paused or self.load() > sub.max_in_flight // 2:
                    self._wake.clear()
                    await self._wake.wait()
                while self.broker.overload() and not self._paused:  # noqa: ASYNC110
                    await asyncio.sleep(0.1)  # (nothing signals the end of an overload: poll)
                self._throttled = False
                for s in self.partitions.values():
                    s.paused = False
                continue  # (paused again meanwhile, or over the limit again)
            room = min(
                sub.max_in_flight - self.load(),
                self.broker.admission_room() * (sub.batch_max_records or 1),
            )
            take = min(self._limit(), max(room, 1))
            msgs, highs, missing, errors = await self._call(self._poll, consumer, take)
            affected = await self._in_range(consumer, msgs, highs, errors)
            if affected:  # (read on where they start again, or stopped)
                msgs = [m for m in msgs if m.partition not in affected]
            while missing is not None:
                # The records wait here, unacknowledged, until the registry answers: none
                # is dead-lettered for it, none skipped, later ones do not overtake them.
                if not self.stalled:
                    log.warning("subscription %s stalls: %s", self.sub.name, missing)
                self.stalled = str(missing)
                await asyncio.sleep(1.0)
                missing = await self._call(self._prefetch, msgs)
            if self.stalled:
                log.warning("subscription %s resumes: its schemas are fetched", self.sub.name)
                self.stalled = ""
            if msgs and self._paused:
                # Paused while this poll was out (or stalled): its records are read again on
                # resume, so that nothing is taken in after the pause was answered.
                await self._rewind(consumer, msgs)
                continue
            if msgs:
                faults.reached("after-kafka-poll")
                self._submit(msgs)

    async def _in_range(
        self,
        consumer: Consumer,
        msgs: list[KafkaMessage],
        highs: dict[int, int | None],
        errors: list[PartitionError],
    ) -> set[int]:
        """The partitions read whose position is not in their log, handled (the module's
        docstring); their records of this poll, if any, are not used."""
        read = {m.partition for m in msgs}
        ends_below: dict[int, str] = {}
        for n, hi in highs.items():
            stats = self.partitions.get(n)
            if stats is not None and hi is not None:
                stats.high = hi
                if hi < stats.durable and not stats.pending and n not in read:
                    # (what Tansu does where Kafka answers OFFSET_OUT_OF_RANGE)
                    ends_below[n] = f"its end {hi} is below the position {stats.durable}"
        affected = set(ends_below)
        if errors:
            affected |= await self._out_of_range(errors, consumer, ends_below)
        if ends_below:
            await self._reassign(consumer, ends_below)
        return affected

    def _limit(self) -> int:
        """Records per consume call: a stream handler's batches are cut per partition from
        one call, so it asks for a full batch of each partition."""
        if self.sub.batch_max_records:
            return min(max(BATCH, self.sub.batch_max_records * len(self.partitions)), 20_000)
        return BATCH

    def _poll(
        self, consumer: Consumer, n: int
    ) -> tuple[
        list[KafkaMessage], dict[int, int | None], RegistryError | None, list[PartitionError]
    ]:
        # A stream handler waits up to batch_max_ms for full batches; others poll every 0.1s.
        wait = self.sub.batch_wait_ms / 1000 if self.sub.batch_max_records else 0.1
        msgs = consumer.consume(n, wait)
        highs = {n: consumer.cached_high(self.sub.topic, n) for n in self.partitions}
        errors, consumer.errors = consumer.errors, []
        return msgs, highs, self._prefetch(msgs), errors

    def _prefetch(self, msgs: list[KafkaMessage]) -> RegistryError | None:
        """The serde's blocking lookups for these records (Avro: schemas by id), here on
        the consumer's thread, so that decoding them on the event loop does no I/O. The
        registry's error if it cannot answer now."""
        try:
            self.serde.prefetch(m.value for m in msgs)
        except RegistryError as e:
            return e
        return None

    # --- records to commands -------------------------------------------------------------

    def _ingest(self, stats: PartitionStats, epoch: int, **fields: Any) -> KafkaIngest:
        """The command that takes a partition's records (``fields``) into the log."""
        sub = self.sub
        return KafkaIngest(
            subscription=sub.name,
            producer=stats.producer,
            topic=sub.topic,
            partition=stats.partition,
            service=sub.service,
            handler=sub.handler,
            kind=self.kind,
            generation=sub.created_at,
            epoch=epoch,
            topic_id=self.topic_id or "",
            **fields,
        )

    def _submit(self, msgs: list[KafkaMessage]) -> None:
        by_part: dict[int, list[KafkaMessage]] = {}
        for m in msgs:
            by_part.setdefault(m.partition, []).append(m)
        sub = self.sub
        for n, batch in by_part.items():
            stats = self.partitions.get(n)
            if stats is None:
                continue
            # A stream handler on JSON: records go straight into packed batches (egress.py).
            # (Not Avro, whose handler input is JSON too: its values must be decoded.)
            fast = bool(sub.batch_max_records) and isinstance(self.serde, JsonSerde)
            records = [] if fast else [self._record(m) for m in batch]
            cmd = self._ingest(
                stats,
                stats.epoch,
                dead_letter_topic=sub.dead_letter_topic or "",
                records=records,
                output=sub.egress_target(),
                batch_max=sub.batch_max_records or 0,
            )
            if fast:
                pack_messages(
                    cmd,
                    batch,
                    self._record,
                    max_bytes=sub.max_record_bytes,
                    keyed=self.kind != Kind.SERVICE,
                )
            elif sub.batch_max_records:
                pack_batches(cmd)  # a stream handler: records packed into batches, once
            wid, fut = self.broker.waiter()
            cmd.waiter = wid
            stats.pending += len(batch)
            self.broker.submit(cmd)
            bad = sum(1 for r in (cmd.records if fast else records) if r.reason)
            last = batch[-1].offset
            fut.add_done_callback(
                functools.partial(self._durable, stats, len(batch), bad, last, stats.epoch)
            )

    def _durable(
        self,
        stats: PartitionStats,
        n: int,
        bad: int,
        last: int,
        epoch: int,
        fut: asyncio.Future[Any],
    ) -> None:
        stats.pending = max(stats.pending - n, 0)  # (a reopen zeroed it meanwhile)
        if fut.cancelled() or fut.exception() is not None:
            return
        reply = fut.result()
        if reply.kind != "ok":
            return  # not durable (the broker failed under it, broker.die): commit nothing
        if epoch != stats.epoch:
            return  # read from the topic before it was recreated: its offsets mean nothing now
        created = int(reply.message or 0)
        self.in_flight += created
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        stats.ingested += n
        if not self.sub.dead_letter_topic:
            stats.failed += bad  # recorded as failed invocations
        if last + 1 > stats.durable:
            stats.durable = last + 1
            consumer = self._consumer
            if consumer is not None:
                # Invariant 1: the offset goes back to Kafka only now that the log has it.
                tp = TopicPartitionOffset(self.sub.topic, stats.partition, stats.durable)
                self._ex.submit(_commit_quietly, consumer, tp)

    def _record(self, m: KafkaMessage) -> KafkaRecord:
        sub = self.sub
        size = len(m.value or b"") + len(m.key or b"")
        headers = [p.Header(key=k, value=_header_text(v)) for k, v in m.headers]
        rec = KafkaRecord(offset=m.offset, headers=headers)
        reason = ""
        if size > sub.max_record_bytes:
            reason = f"record of {size} bytes exceeds max_record_bytes ({sub.max_record_bytes})"
        elif m.key is None and self.kind != Kind.SERVICE:
            reason = f"null key: {sub.service}/{sub.handler} is keyed and needs a record key"
        elif m.key is not None and sub.key_encoding == "strict" and not _is_utf8(m.key):
            reason = "key is not UTF-8 (key_encoding = strict)"
        if not reason:
            try:
                rec.input = self.serde.decode(m.value)
            except DecodeError as e:
                reason = f"{sub.serde} serde: {e.reason}"
        key = encode_key(m.key) if m.key is not None else ""
        if reason:
            rec.reason = reason
            rec.raw_key = m.key
            rec.raw_value = m.value
            rec.key = key
            return rec
        rec.key = key
        if sub.batch_max_records:
            # A stream handler's batch names topic and partition once; per record only the
            # key (raw_key; None: no key) and a content type that is not JSON (egress.py).
            rec.raw_key = m.key
            if self.serde.content_type != "application/json":
                rec.headers.append(p.Header(key="content-type", value=self.serde.content_type))
            return rec
        rec.headers += [
            p.Header(key="kafka.topic", value=m.topic),
            p.Header(key="kafka.partition", value=str(m.partition)),
            p.Header(key="kafka.offset", value=str(m.offset)),
            p.Header(key="kafka.timestamp", value=str(m.timestamp)),
        ]
        if m.key is not None:
            rec.headers.append(p.Header(key="kafka.key", value=key))
        rec.headers.append(p.Header(key="content-type", value=self.serde.content_type))
        return rec

    def to_json(self) -> dict[str, Any]:
        state = self.status
        if self._throttled:
            state = "throttled"
        elif self.stalled and not self._paused:
            state = f"stalled: {self.stalled}; retrying"
        if self.halted:
            state = f"stopped: {self.halted}; resume the subscription to read the new topic"
        return {
            "state": state,
            "in_flight": self.in_flight,
            "peak_in_flight": self.peak_in_flight,
            "throttles": self.throttles,
            "batch_max_records": self.sub.batch_max_records or 0,
            "partitions": [
                s.to_json() for s in sorted(self.partitions.values(), key=lambda s: s.partition)
            ],
        }


def _commit_quietly(consumer: Consumer, tp: TopicPartitionOffset) -> None:
    try:
        consumer.commit([tp])
    except KafkaError as e:  # the log has the position; Kafka's copy is for tools and lag
        log.debug("offset commit failed: %s", e)


def _is_utf8(b: bytes) -> bool:
    try:
        b.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _header_text(v: bytes | None) -> str:
    if v is None:
        return ""
    return encode_key(v)
