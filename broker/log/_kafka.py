"""The log on Kafka: one partition of a topic that only Sluice writes (DESIGN.md, "Scale-out").

    append ──produce──► Kafka (idempotent producer, acks=all)
       ▲                    │ acknowledged: replicated
       └─ own records ◄──── delivery report (offset)
    on_durable ◄─ in offset order, each once ◄── reader thread (other writers' records, on demand)

A record is applied once Kafka holds it on every in-sync replica: this node's own records when
their produce is acknowledged (``acks=all``; the delivery report carries the offset), the
records of other writers, and every record on replay, once the reader reads them. Both paths
feed one cursor, the next offset to apply: an acknowledged record at that offset is applied at
once (nothing came between it and the record before), one past it waits until the reader has
delivered what lies between (another writer's records, or offsets that Tansu left empty), and
a record that reaches the cursor a second time is skipped. So every node applies the same
records in the same order, whoever wrote them (the cluster issue's followers), and none twice
or out of order. The LSN of the record at offset ``o`` is ``o + 1``, so that LSN 0 still means
"nothing applied".

The reader does not read back what was acknowledged: it reads from the cursor on, when an
acknowledgement shows a gap and otherwise once every IDLE_READ_S, and is paused in between.
(Reading back every own record cost the single broker a fifth to a third of its throughput on
two cores: Tansu serving the fetches, librdkafka and Python decoding them.)

Records carry the header ``sluice-log: 1``: a topic whose first record lacks it is not a
Sluice log (or is one of a newer format), and the log refuses to open on it.

A produce that fails (librdkafka has retried it until ``message.timeout.ms``) has an unknown
outcome: the log fails for good, as the embedded log does after a failed sync, and the owner
is told through ``on_failed``; the next process reads what Kafka holds and goes on from there.

The log is trimmed only below the oldest snapshot kept (broker/snapshots.py): with no
snapshot to restore from, replaying the whole partition is how a broker that lost its disk
rebuilds its tables.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

import confluent_kafka as ck
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from sluice.broker import faults
from sluice.broker.errors import Fatal, LogError, LogInterrupted
from sluice.broker.ids import Lsn

from ._base import Log, Record

FORMAT_HEADER = "sluice-log"
FORMAT = b"1"
_HEADERS: list[tuple[str, str | bytes | None]] = [(FORMAT_HEADER, FORMAT)]
log = logging.getLogger("sluice.log.kafka")
STUCK_S = 5.0  # records below the high watermark that long unread: a new reader consumer
IDLE_READ_S = 1.0  # with no gap to fill, the reader looks for other writers' records this often
# An apply of another writer's record waits for a produce and a fetch (an own record: for the
# produce): the broker's longest wait on an idle fetch and the producer's batching delay are a
# round trip's floor.
# (Measured on Tansu: 2 to 25 ms and 1 to 5 ms moved nothing beyond noise; 0 ms of linger
# sent one record per request, and throughput fell a hundredfold.)
FETCH_WAIT_MS = 10
LINGER_MS = 1
# Reader errors that mean the partition's records are gone from under the reader, not that a
# connection dropped (librdkafka reconnects by itself): the log cannot go on.
_LOST = frozenset(
    {
        ck.KafkaError.OFFSET_OUT_OF_RANGE,
        ck.KafkaError._AUTO_OFFSET_RESET,
        ck.KafkaError.UNKNOWN_TOPIC_OR_PART,
        ck.KafkaError._UNKNOWN_PARTITION,
        ck.KafkaError.TOPIC_AUTHORIZATION_FAILED,
    }
)


class KafkaLogError(LogError):
    """The Kafka log cannot be used as configured (a bad address, a foreign topic, ...)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)


class KafkaUnavailable(Exception):
    """Kafka did not answer (down, unreachable, or still starting): worth trying again."""


_UNREACHABLE = frozenset(
    {
        ck.KafkaError._TRANSPORT,
        ck.KafkaError._TIMED_OUT,
        ck.KafkaError._ALL_BROKERS_DOWN,
        ck.KafkaError._RESOLVE,
        ck.KafkaError.REQUEST_TIMED_OUT,
        ck.KafkaError.BROKER_NOT_AVAILABLE,
        ck.KafkaError.LEADER_NOT_AVAILABLE,
        ck.KafkaError.NOT_LEADER_FOR_PARTITION,
        ck.KafkaError.COORDINATOR_NOT_AVAILABLE,
    }
)


def _refusal(e: ck.KafkaException, what: str) -> BaseException:
    """What a failed admin or metadata call means: Kafka is unreachable for now (retry), or it
    refuses for good (a ``KafkaLogError``: no rights, a bad configuration)."""
    err = e.args[0] if e.args else None
    if isinstance(err, ck.KafkaError) and (err.retriable() or err.code() in _UNREACHABLE):
        return KafkaUnavailable(f"{what}: {err.str()}")
    return KafkaLogError(f"{what}: {e}")


@dataclass(frozen=True, slots=True)
class KafkaLogAddress:
    """``kafka://HOST:PORT[,HOST:PORT]/TOPIC``, parsed."""

    bootstrap: str
    topic: str

    @classmethod
    def parse(cls, url: str) -> KafkaLogAddress:
        parts = urlsplit(url)
        topic = parts.path.strip("/")
        if parts.scheme != "kafka" or not parts.netloc or not topic or "/" in topic:
            raise ValueError(f"{url!r}: expected kafka://HOST:PORT[,HOST:PORT]/TOPIC")
        return cls(parts.netloc, topic)

    def __str__(self) -> str:
        return f"kafka://{self.bootstrap}/{self.topic}"


def ensure_topic(
    properties: Mapping[str, str],
    topic: str,
    partitions: int,
    replication_factor: int | None = None,
    timeout: float = 30.0,
) -> int:
    """Create the log topic with ``partitions`` partitions if it is missing (never compacted,
    kept forever); refuse one that exists with another count. Returns the replication factor
    of a topic it created (0 if it existed). Without ``replication_factor``: 3 on a cluster
    of 3 brokers or more, else 1."""
    admin = AdminClient(dict(properties))
    try:
        meta = admin.list_topics(timeout=timeout)
    except ck.KafkaException as e:
        raise _refusal(e, f"cannot reach Kafka at {properties.get('bootstrap.servers')}") from None
    found = meta.topics.get(topic)
    if found is not None and found.error is None:
        if len(found.partitions) != partitions:
            raise KafkaLogError(
                f"the log topic {topic} has {len(found.partitions)} partitions, but the broker "
                f"runs {partitions}: start it with --partitions {len(found.partitions)}, or "
                "give it another topic"
            )
        return 0
    rf = replication_factor or (3 if len(meta.brokers) >= 3 else 1)
    config = {"cleanup.policy": "delete", "retention.ms": "-1", "retention.bytes": "-1"}
    if rf >= 3:
        config["min.insync.replicas"] = "2"
    fut = admin.create_topics([NewTopic(topic, partitions, rf, config=config)])[topic]
    try:
        fut.result(timeout)
    except ck.KafkaException as e:
        err = e.args[0] if e.args else None
        if not (
            isinstance(err, ck.KafkaError) and err.code() == ck.KafkaError.TOPIC_ALREADY_EXISTS
        ):
            raise _refusal(e, f"cannot create the log topic {topic}") from None
        return ensure_topic(properties, topic, partitions, replication_factor, timeout)
    log.info("created the log topic %s: %d partitions, replication %d", topic, partitions, rf)
    return rf


class LogProducer:
    """The idempotent producer (``acks=all``) of every partition of the log topic that this
    process writes, and the thread that serves its delivery reports: with a processor per
    partition, one client and one produce request carry the batches of all of them.

    Each log ``attach``es when it opens and ``release``s when it closes; the last release
    flushes what is in flight, or, when a log failed, drops it (``purge``): nothing is sent
    later behind the back of a log opened next in this process. (A request already sent may
    still be written: its proposals carry this leader's epoch, which the next one fences.)"""

    def __init__(self, properties: Mapping[str, str], topic: str, client_id: str) -> None:
        self.topic = topic
        self.client = ck.Producer(
            {
                "linger.ms": LINGER_MS,  # (a --log-property can change it)
                **properties,
                "enable.idempotence": True,
                "acks": "all",
                "client.id": client_id,
            }
        )
        self._logs: list[KafkaLog] = []
        self._attached = 0
        self._failed = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def attach(self, log: KafkaLog) -> None:
        self._logs.append(log)
        self._attached += 1
        if self._thread is None:
            self._thread = threading.Thread(target=self._poll, name="sluice-log-producer")
            self._thread.daemon = True
            self._thread.start()

    async def release(self, *, failed: bool) -> None:
        self._failed = self._failed or failed
        self._attached -= 1
        if self._attached > 0:
            return
        loop = asyncio.get_running_loop()
        if self._failed:
            self.client.purge()
            await loop.run_in_executor(None, self.client.flush, 5)
        else:
            await loop.run_in_executor(None, self.client.flush, 30)
        self._stop.set()
        if self._thread is not None:
            await loop.run_in_executor(None, self._thread.join, 10)

    def _poll(self) -> None:
        """Serve delivery reports, and hand each poll's worth to the loop at once."""
        while not self._stop.is_set():
            try:
                self.client.poll(0.05)
            except ck.KafkaException as e:  # fatal (e.g. a sequence Tansu lost in a kill)
                what = f"the producer of the log topic {self.topic} failed: {e.args[0].str()}"
                for log in self._logs:
                    log.interrupted(LogInterrupted(what))
                return
            for log in self._logs:
                log.hand_over_acked()
        for log in self._logs:
            log.hand_over_acked()


class KafkaLog(Log):
    """One partition of the log topic as a ``Log``."""

    outlives_disk = True

    # Offsets may skip: Tansu on S3, SIGKILLed in a produce, leaves the offsets it reserved
    # for it empty (every reader sees the same hole, and its appends failed or fail the log).
    gapless = False

    def __init__(
        self,
        properties: Mapping[str, str],
        topic: str,
        partition: int = 0,
        *,
        read_batch: int = 2_000,
        producer: LogProducer | None = None,
    ) -> None:
        """``producer``: shared with the logs of the other partitions this process writes
        (else the log makes its own)."""
        self._props = dict(properties)
        self.topic = topic
        self.partition = partition
        self._read_batch = read_batch
        self._on_durable: Callable[[list[Record]], None] | None = None
        self._on_failed: Callable[[Fatal], None] | None = None
        self._failed: Fatal | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._next = 0  # the offset applied next (before open: read next)
        # Own records acknowledged ahead of ``_next`` (other writers' records come first).
        self._early: dict[int, Record] = {}
        self._wanted = threading.Event()  # the reader has a gap to fill
        self._acked: deque[tuple[str | None, Record | None]] = deque()
        self._start, self._high = self._watermarks(self._consumer("sluice-log-probe"))
        self._check_format()
        self._in_flight = 0
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._producer = producer
        self._opened = False
        self._trim_refused = False
        self._trim_failures = 0  # DeleteRecords failed in a row (see trim)

    # --- setup ---------------------------------------------------------------------------

    def _consumer(self, purpose: str) -> ck.Consumer:
        return ck.Consumer(
            {
                "fetch.wait.max.ms": FETCH_WAIT_MS,  # (a --log-property can change it)
                **self._props,
                "group.id": f"sluice-log-{self.topic}",  # nothing is committed there
                "client.id": purpose,
                "enable.auto.commit": False,
                "enable.partition.eof": True,
                "auto.offset.reset": "error",
            }
        )

    def _watermarks(self, consumer: ck.Consumer) -> tuple[int, int]:
        try:
            low, high = consumer.get_watermark_offsets(
                ck.TopicPartition(self.topic, self.partition), timeout=15
            )
        except ck.KafkaException as e:
            raise _refusal(e, f"cannot read the log topic {self.topic}") from None
        finally:
            consumer.close()
        return int(low), int(high)

    def _check_format(self) -> None:
        """The partition's first record must be a Sluice log record of this format."""
        if self._high <= self._start:
            return
        first = next(self._read(self._start), None)
        if first is None:
            return
        headers = dict(first.headers() or [])
        if FORMAT_HEADER not in headers:
            raise KafkaLogError(
                f"the topic {self.topic} holds records that are not Sluice's log (no "
                f"{FORMAT_HEADER} header at offset {_offset(first)}): give the broker a topic "
                "of its own"
            )
        if headers[FORMAT_HEADER] != FORMAT:
            raise KafkaLogError(
                f"the log topic {self.topic} is of format {headers[FORMAT_HEADER]!r}, this "
                f"broker reads {FORMAT!r}: run a newer broker"
            )

    def _read(self, start: int) -> Iterator[ck.Message]:
        """Messages from offset ``start`` to the end of the partition (the high watermark that
        fetches report: Tansu's ListOffsets counts a produce batch as one record, so the
        watermark asked for at open time cannot bound the read)."""
        c = self._consumer("sluice-log-recovery")
        try:
            c.assign([ck.TopicPartition(self.topic, self.partition, start)])
            while True:
                for m in self._take(c, 5.0):
                    err = m.error()
                    if err is None:
                        yield m
                    elif err.code() == ck.KafkaError._PARTITION_EOF:
                        return
                    elif err.fatal() or err.code() in _LOST:
                        raise KafkaLogError(f"reading the log topic {self.topic}: {err.str()}")
        finally:
            c.close()

    def _take(self, c: ck.Consumer, timeout: float) -> list[ck.Message]:
        """Up to a batch of messages: ``consume`` waits its whole timeout unless the batch
        fills, so wait for the first message alone, then take what else is there."""
        first = c.poll(timeout)
        if first is None:
            return []
        return [first, *c.consume(self._read_batch - 1, timeout=0)]

    # --- the Log interface ---------------------------------------------------------------

    def read_from(self, lsn: Lsn) -> Iterator[Record]:
        """What the partition holds from ``lsn`` on, up to its end when the read gets there."""
        start = max(lsn - 1, self._start)
        self._next = start
        for m in self._read(start):
            self._next = _offset(m) + 1
            yield _record(m)

    def open(
        self,
        on_durable: Callable[[list[Record]], None],
        *,
        on_failed: Callable[[Fatal], None] | None = None,
    ) -> None:
        self._on_durable = on_durable
        self._on_failed = on_failed
        self._loop = asyncio.get_running_loop()
        self._next = max(self._next, self._start)
        if self._producer is None:
            client = f"sluice-log-{self.topic}-{self.partition}"
            self._producer = LogProducer(self._props, self.topic, client)
        self._producer.attach(self)
        self._opened = True
        t = threading.Thread(target=self._tail_reader, name="sluice-log-reader", daemon=True)
        t.start()
        self._threads.append(t)

    def append(self, payload: bytes, timestamp: int) -> Lsn:
        if self._failed is not None:
            raise LogError("the log failed earlier; the broker must restart", self._failed)
        assert self._opened and self._producer is not None, "append before open"
        while True:
            try:
                self._producer.client.produce(
                    self.topic,
                    payload,
                    partition=self.partition,
                    timestamp=timestamp,
                    headers=_HEADERS,
                    on_delivery=functools.partial(self._delivered, floor=self._next),
                )
                break
            except BufferError:  # librdkafka's queue is full: let it drain, then again
                self._producer.client.poll(0.05)
        self._in_flight += 1
        return self.tail

    def trim(self, lsn: Lsn) -> int:
        """Delete the records up to ``lsn`` (DeleteRecords; blocking: run it off the event
        loop). Only below the oldest snapshot kept (the broker's caller sees to it): a broker
        that loses its disk restores a snapshot and reads the log from there. A Kafka broker
        that cannot delete records (Tansu) is told once, with a warning, and the log then keeps
        every record. Returns 1 when records were deleted, else 0."""
        offset = int(lsn)  # the record at offset o has LSN o + 1: delete below offset lsn
        if self._trim_refused or offset <= self._start:
            return 0
        config: dict[str, str | int | float | bool] = {**self._props}
        admin = AdminClient(config)
        target = ck.TopicPartition(self.topic, self.partition, offset)
        try:
            futures = admin.delete_records([target], request_timeout=10)
            for f in futures.values():
                f.result(timeout=15)
        except Exception as e:
            # A broker that cannot delete records may say so, or drop the connection (Tansu
            # panics on DeleteRecords): a lost connection twice in a row, while the rest of
            # the log works, is a refusal as well.
            err = e.args[0] if e.args else None
            self._trim_failures += 1
            reason = err.str() if isinstance(err, ck.KafkaError) else str(e)
            transient = isinstance(err, ck.KafkaError) and err.code() in _UNREACHABLE
            if transient and self._trim_failures < 2:
                log.info("trimming the log topic %s failed (%s); trying again later",
                         self.topic, reason)  # fmt: skip
                return 0
            self._trim_refused = True
            log.warning(
                "the Kafka broker of the log topic %s does not delete records (%s): the log "
                "keeps every record, and is never trimmed",
                self.topic, reason,
            )  # fmt: skip
            return 0
        self._trim_failures = 0
        self._start = offset
        log.info("trimmed the log topic %s below LSN %d", self.topic, offset + 1)
        return 1

    @property
    def written(self) -> bool:
        """Whether the partition ever held a record (when it opened)."""
        return self._high > 0

    @property
    def start_lsn(self) -> Lsn:
        """The first LSN the log holds (1 when it was never trimmed)."""
        return Lsn(self._start + 1)

    @property
    def tail(self) -> Lsn:
        """The LSN the next record gets, as far as this node knows (read, plus in flight)."""
        return Lsn(self._next + self._in_flight + 1)

    def status(self) -> dict[str, object]:
        """Positions as LSNs (offset + 1); ``high``: the last LSN Kafka holds, as the reader's
        latest fetch reported it (Tansu's ListOffsets would count a batch as one record), or
        the last one applied if the reader has not read it back yet."""
        return {
            "kind": "kafka",
            "topic": self.topic,
            "partition": self.partition,
            "start": self._start + 1,
            "high": max(self._high, self._next),
            "read": self._next,
            "in_flight": self._in_flight,
            "waiting": len(self._early),
        }

    @property
    def failed(self) -> Fatal | None:
        return self._failed

    async def close(self) -> None:
        if self._opened and self._producer is not None:
            self._opened = False
            await self._producer.release(failed=self._failed is not None)
        self._stop.set()
        self._wanted.set()
        for t in self._threads:
            await asyncio.get_running_loop().run_in_executor(None, t.join, 10)
        self._threads = []

    # --- threads -------------------------------------------------------------------------

    def _delivered(self, err: ck.KafkaError | None, msg: ck.Message, floor: int) -> None:
        """(the producer's poll, on the producer thread or in ``flush``) A produce finished:
        queue the record as Kafka placed it, or why its outcome is unknown, for the loop.

        Unknown: an error, or an acknowledgement with no offset or below ``floor``, the
        offset read when it was produced, where the record cannot be (Tansu on S3, killed with
        it in flight, takes its retry for a duplicate that it never stored, and acknowledges
        it so: tests/reliability/tansu_s3_offsets.py)."""
        offset = msg.offset()
        kind, ts = msg.timestamp()
        value = msg.value()
        try:
            faults.check("log-produce")
        except OSError as e:
            self._acked.append((str(e), None))
            return
        if err is not None:
            self._acked.append((err.str(), None))
        elif offset is None or offset < floor:
            why = f"acknowledged at offset {offset}, below offset {floor} that was read before it"
            self._acked.append((why, None))
        elif kind == ck.TIMESTAMP_NOT_AVAILABLE:
            self._acked.append((None, None))  # (at its offset, with no timestamp: read it)
        else:
            rec = Record(Lsn(offset + 1), int(ts), value if value is not None else b"")
            self._acked.append((None, rec))

    def interrupted(self, exc: Fatal) -> None:
        """(the producer's thread) The producer failed for good."""
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):  # (the loop closed: the broker is gone)
            self._loop.call_soon_threadsafe(self._fail, exc)

    def hand_over_acked(self) -> None:
        """(the producer's thread) Hand the delivery reports queued so far to the loop."""
        acked = []
        while self._acked:
            acked.append(self._acked.popleft())
        if acked and self._loop is not None:
            with contextlib.suppress(RuntimeError):  # (the loop closed: the broker is gone)
                self._loop.call_soon_threadsafe(self._settle, acked)

    def _settle(self, acked: list[tuple[str | None, Record | None]]) -> None:
        """(the loop) Produces that finished: apply what Kafka placed, or fail the log."""
        self._in_flight -= len(acked)
        for why, _ in acked:
            if why is not None:
                self._fail(LogInterrupted(f"an append to the log topic {self.topic} failed: {why}"))
                return
        self._take_in([rec for _, rec in acked if rec is not None], read=False)

    def _tail_reader(self) -> None:
        """Read the partition from ``_next`` on when asked, and hand each batch to the loop in
        order."""
        position = self._next
        try:
            while not self._stop.is_set():
                position = self._read_tail(position)
        except RuntimeError:  # the loop closed under us: the broker is gone
            return

    def _read_tail(self, position: int) -> int:
        """Read with one consumer, paused between reads, until the log stops or the consumer
        is stuck: records below the high watermark that do not come for STUCK_S (librdkafka
        was seen to stop fetching, with no error, after Tansu restarted). Returns where to read
        on."""
        c = self._consumer("sluice-log-reader")
        tp = ck.TopicPartition(self.topic, self.partition)
        try:
            c.assign([ck.TopicPartition(self.topic, self.partition, position)])
            while not self._stop.is_set():
                # What is applied needs no reading: from the cursor on. (``_next`` belongs to
                # the loop; reading an int here is safe, and a stale one only reads more.)
                if self._next > position:
                    position = self._next
                    c.seek(ck.TopicPartition(self.topic, self.partition, position))
                at = self._read_to_end(c, tp, position)
                if at is None:
                    return position
                position = at
                c.pause([tp])
                self._wanted.wait(IDLE_READ_S)
                self._wanted.clear()
                c.resume([tp])
            return position
        finally:
            c.close()

    def _read_to_end(self, c: ck.Consumer, tp: ck.TopicPartition, position: int) -> int | None:
        """Deliver what the partition holds from ``position`` on, until a read finds nothing
        more while no acknowledged record waits for a gap to be filled. Returns where it got
        (None: the log failed, or the consumer is stuck and a new one should read on)."""
        assert self._loop is not None
        progress = time.monotonic()
        while not self._stop.is_set():
            batch: list[Record] = []
            for m in self._take(c, 0.1):
                err = m.error()
                if err is None:
                    batch.append(_record(m))
                elif err.code() != ck.KafkaError._PARTITION_EOF:
                    what = f"reading the log topic {self.topic} failed: {err.str()}"
                    if err.fatal() or err.code() in _LOST:
                        self._loop.call_soon_threadsafe(self._fail, LogError(what))
                        self._stop.set()
                        return None
                    log.warning("%s; librdkafka retries", what)  # a broker went away
            if batch:
                position = batch[-1].lsn  # (the next offset)
                progress = time.monotonic()
                self._loop.call_soon_threadsafe(self._deliver, batch)
            # (here: a consumer's calls wait for each other, so no other thread asks it)
            high = c.get_watermark_offsets(tp, cached=True)[1]
            if high >= 0:  # (negative: none fetched yet)
                self._high = high
            if high > position and time.monotonic() - progress > STUCK_S:
                log.warning(
                    "the log reader got no record for %.0fs at offset %d of %s, below its "
                    "high watermark %d: reading on with a new consumer",
                    STUCK_S, position, self.topic, high,
                )  # fmt: skip
                return None
            if not batch and high <= position and not self._early:
                return position
        return position

    def _deliver(self, batch: list[Record]) -> None:
        """(the loop) A batch the reader read, in offset order."""
        self._take_in(batch, read=True)

    def _take_in(self, records: list[Record], *, read: bool) -> None:
        """Apply, in one ``on_durable`` call, the records that come next in offset order: read
        ones, and acknowledged own ones once everything before them is applied (before that,
        they wait in ``_early``, and the reader is asked for the gap)."""
        if self._failed is not None:
            return
        ready: list[Record] = []
        for rec in records:
            offset = rec.lsn - 1
            if offset < self._next:  # applied already (read, or acknowledged)
                continue
            if not read and offset > self._next:
                self._early[offset] = rec
                self._wanted.set()
                continue
            # (a read record past ``_next``: offsets left empty, which every reader skips)
            ready.append(rec)
            self._early.pop(offset, None)
            self._next = offset + 1
            while self._next in self._early:
                ready.append(self._early.pop(self._next))
                self._next += 1
        if not ready:
            return
        faults.reached("after-log-append")
        assert self._on_durable is not None
        try:
            self._on_durable(ready)
        except Fatal as e:  # the tables failed to apply what the log holds
            self._fail(e)

    def _fail(self, exc: Fatal) -> None:
        if self._failed is not None:
            return
        self._failed = exc
        self._stop.set()
        if self._on_failed is None:
            raise exc
        self._on_failed(exc)


def _offset(m: ck.Message) -> int:
    offset = m.offset()
    assert offset is not None, "a consumed message has an offset"
    return offset


def _record(m: ck.Message) -> Record:
    _, ts = m.timestamp()
    value = m.value()
    return Record(Lsn(_offset(m) + 1), int(ts), value if value is not None else b"")
