"""The one module that imports confluent-kafka."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import cast

import confluent_kafka as ck
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

Headers = list[tuple[str, bytes | str | None]]  # (as librdkafka takes them)

# Offsets with a meaning before a partition has a position.
OFFSET_BEGINNING = ck.OFFSET_BEGINNING
OFFSET_END = ck.OFFSET_END


class KafkaError(Exception):
    """A Kafka operation failed. ``retriable``: trying again later may succeed."""

    def __init__(self, message: str, *, retriable: bool = False) -> None:
        super().__init__(message)
        self.retriable = retriable


def _wrap(e: BaseException) -> KafkaError:
    if isinstance(e, ck.KafkaException) and e.args and isinstance(e.args[0], ck.KafkaError):
        err = e.args[0]
        return KafkaError(err.str(), retriable=err.retriable())
    return KafkaError(str(e))


def _partitions(client: ck.Consumer | ck.Producer, topic: str, timeout: float) -> list[int] | None:
    """The topic's partitions from the client's metadata, or None if it does not exist."""
    try:
        md = client.list_topics(topic, timeout=timeout)
    except ck.KafkaException as e:
        raise _wrap(e) from None
    t = md.topics.get(topic)
    if t is None or t.error is not None or not t.partitions:
        return None
    return sorted(t.partitions)


@dataclass(slots=True, frozen=True)
class TopicPartitionOffset:
    topic: str
    partition: int
    offset: int = -1


@dataclass(slots=True)
class KafkaMessage:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes | None]] = field(default_factory=list)
    timestamp: int = 0  # ms since the epoch, as the record carries it (0: none)


@dataclass(slots=True, frozen=True)
class PartitionError:
    """A partition that cannot be read where it stands. ``kind``: "out_of_range" (its
    position is not in the partition's log: with ``auto.offset.reset=error`` librdkafka
    stops there and says so, instead of jumping), "unknown" (the topic or the partition is
    gone)."""

    topic: str
    partition: int
    offset: int
    kind: str
    message: str


_OUT_OF_RANGE = {ck.KafkaError._AUTO_OFFSET_RESET, ck.KafkaError.OFFSET_OUT_OF_RANGE}
_UNKNOWN = {
    ck.KafkaError.UNKNOWN_TOPIC_OR_PART,
    ck.KafkaError._UNKNOWN_TOPIC,
    ck.KafkaError._UNKNOWN_PARTITION,
}


class Consumer:
    """A consumer with manual partition assignment; ``group.id`` only names where committed
    offsets are stored (no group membership, so no rebalance waits). ``errors``: what
    ``consume`` met on partitions (``PartitionError``), for the caller to take."""

    def __init__(self, properties: Mapping[str, str]) -> None:
        conf: dict[str, object] = {
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "enable.partition.eof": False,
            **properties,
        }
        try:
            self._c = ck.Consumer(conf)
        except ck.KafkaException as e:
            raise _wrap(e) from None
        self.errors: list[PartitionError] = []

    def partitions(self, topic: str, timeout: float = 10.0) -> list[int] | None:
        """The topic's partitions, or None if the topic does not exist."""
        return _partitions(self._c, topic, timeout)

    def committed(
        self, tps: Sequence[TopicPartitionOffset], timeout: float = 10.0
    ) -> dict[int, int]:
        """Committed offsets by partition (absent: nothing committed)."""
        try:
            out = self._c.committed(
                [ck.TopicPartition(t.topic, t.partition) for t in tps], timeout=timeout
            )
        except ck.KafkaException as e:
            raise _wrap(e) from None
        return {tp.partition: tp.offset for tp in out if tp.offset >= 0}

    def watermarks(self, topic: str, partition: int, timeout: float = 5.0) -> tuple[int, int]:
        try:
            lo, hi = self._c.get_watermark_offsets(
                ck.TopicPartition(topic, partition), timeout=timeout
            )
        except ck.KafkaException as e:
            raise _wrap(e) from None
        return int(lo), int(hi)

    def cached_high(self, topic: str, partition: int) -> int | None:
        """The high watermark from the last fetch response, without a request."""
        try:
            _, hi = self._c.get_watermark_offsets(ck.TopicPartition(topic, partition), cached=True)
        except ck.KafkaException:
            return None
        return int(hi) if hi >= 0 else None

    def assign(self, tps: Sequence[TopicPartitionOffset]) -> None:
        self._c.assign([ck.TopicPartition(t.topic, t.partition, t.offset) for t in tps])

    def add(self, tps: Sequence[TopicPartitionOffset]) -> None:
        """Assign these partitions too, keeping the others where they are."""
        try:
            self._c.incremental_assign(
                [ck.TopicPartition(t.topic, t.partition, t.offset) for t in tps]
            )
        except ck.KafkaException as e:
            raise _wrap(e) from None

    def pause(self, tps: Sequence[TopicPartitionOffset]) -> None:
        self._c.pause([ck.TopicPartition(t.topic, t.partition) for t in tps])

    def resume(self, tps: Sequence[TopicPartitionOffset]) -> None:
        self._c.resume([ck.TopicPartition(t.topic, t.partition) for t in tps])

    def positions(self, tps: Sequence[TopicPartitionOffset]) -> dict[tuple[str, int], int]:
        """Per partition, the offset the application reads next; it moves past transaction
        markers (control records) too. Negative: not known yet."""
        try:
            out = self._c.position([ck.TopicPartition(t.topic, t.partition) for t in tps])
        except ck.KafkaException as e:
            raise _wrap(e) from None
        return {(tp.topic, tp.partition): tp.offset for tp in out}

    def seek(self, tp: TopicPartitionOffset) -> None:
        self._c.seek(ck.TopicPartition(tp.topic, tp.partition, tp.offset))

    def consume(self, max_records: int, timeout: float) -> list[KafkaMessage]:
        out: list[KafkaMessage] = []
        for m in self._c.consume(max_records, timeout):
            err = m.error()
            if err is not None:
                if err.code() == ck.KafkaError._PARTITION_EOF:
                    continue
                if err.fatal():
                    raise KafkaError(err.str())
                kind = (
                    "out_of_range"
                    if err.code() in _OUT_OF_RANGE
                    else "unknown"
                    if err.code() in _UNKNOWN
                    else ""
                )
                topic, part, offset = m.topic(), m.partition(), m.offset()
                if kind and topic is not None:
                    self.errors.append(
                        PartitionError(
                            topic,
                            part if part is not None else -1,
                            offset if offset is not None else -1,
                            kind,
                            err.str(),
                        )
                    )
                continue  # else transient: librdkafka retries by itself
            ts_type, ts = m.timestamp()
            # A record that is no error has its topic, partition and offset, and its headers
            # as a list of (name, bytes) (librdkafka's typing allows for the error event).
            out.append(
                KafkaMessage(
                    topic=cast(str, m.topic()),
                    partition=cast(int, m.partition()),
                    offset=cast(int, m.offset()),
                    key=m.key(),
                    value=m.value(),
                    headers=cast(list[tuple[str, bytes | None]], m.headers() or []),
                    timestamp=ts if ts_type != ck.TIMESTAMP_NOT_AVAILABLE else 0,
                )
            )
        return out

    def commit(self, tps: Sequence[TopicPartitionOffset]) -> None:
        """Store ``offset`` (the next offset to read) for each partition, asynchronously."""
        try:
            self._c.commit(
                offsets=[ck.TopicPartition(t.topic, t.partition, t.offset) for t in tps],
                asynchronous=True,
            )
        except ck.KafkaException as e:
            raise _wrap(e) from None

    def close(self) -> None:
        self._c.close()


class Producer:
    """An idempotent producer: ``flush`` raises if any record since the last flush failed."""

    def __init__(self, properties: Mapping[str, str | int | bool]) -> None:
        conf: dict[str, object] = {"enable.idempotence": True, "linger.ms": 5, **properties}
        self._p = ck.Producer(conf)
        self._errors: list[str] = []

    def _on_delivery(self, err: ck.KafkaError | None, msg: ck.Message) -> None:
        if err is not None:
            self._errors.append(err.str())

    def produce(
        self,
        topic: str,
        value: bytes | None,
        *,
        key: bytes | None = None,
        headers: Sequence[tuple[str, bytes | str | None]] = (),
        partition: int | None = None,
    ) -> None:
        self._enqueue(
            topic, key, value, list(headers) or None, -1 if partition is None else partition
        )

    def produce_many(
        self, records: Iterable[tuple[str, bytes | None, bytes | None, Headers]]
    ) -> None:
        """``produce`` for many (topic, key, value, headers) records, without its argument
        handling per record: egress sends thousands per transaction."""
        for topic, key, value, headers in records:
            self._enqueue(topic, key, value, headers, -1)

    def _enqueue(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: Headers | None,
        partition: int,  # (-1: by the key)
    ) -> None:
        while True:
            try:
                self._p.produce(
                    topic, value, key, partition, on_delivery=self._on_delivery, headers=headers
                )
                return
            except BufferError:
                self._p.poll(0.05)  # the local queue is full: let deliveries drain
            except ck.KafkaException as e:
                raise _wrap(e) from None

    def flush(self, timeout: float = 30.0) -> None:
        """Wait until every record produced so far is acknowledged (or raise)."""
        left = self._p.flush(timeout)
        if left:
            raise KafkaError(f"{left} records not delivered after {timeout}s", retriable=True)
        self._raise_delivery_errors()

    def _raise_delivery_errors(self) -> None:
        if self._errors:
            errors, self._errors = self._errors, []
            raise KafkaError(f"{len(errors)} records failed: {errors[0]}", retriable=True)

    def close(self) -> None:
        """Drop what is not delivered yet (the caller produces it again, to a new producer)."""
        self._p.purge()
        self._p.flush(0)


class TopicAdmin:
    def __init__(self, properties: Mapping[str, str]) -> None:
        self._a = AdminClient(dict(properties))

    def create_topic(
        self,
        name: str,
        partitions: int,
        timeout: float = 15.0,
        *,
        config: Mapping[str, str] | None = None,
    ) -> None:
        futs = self._a.create_topics(
            [
                NewTopic(
                    name, num_partitions=partitions, replication_factor=1, config=dict(config or {})
                )
            ]
        )
        try:
            futs[name].result(timeout)
        except ck.KafkaException as e:
            err = _wrap(e)
            if "exist" not in str(err).lower():
                raise err from None

    def delete_topic(self, name: str, timeout: float = 15.0) -> None:
        try:
            self._a.delete_topics([name])[name].result(timeout)
        except ck.KafkaException as e:
            raise _wrap(e) from None

    def topic_id(self, topic: str, timeout: float = 10.0) -> str | None:
        """The topic's id (it changes when the topic is deleted and created again); None if
        the topic does not exist or the broker reports no ids."""
        try:
            futs = self._a.describe_topics(ck.TopicCollection([topic]), request_timeout=timeout)
            desc = futs[topic].result(timeout)
        except ck.KafkaException as e:
            err = _wrap(e)
            if "unknown" in str(err).lower() or "not" in str(err).lower():
                return None
            raise err from None
        ident = str(desc.topic_id) if desc.topic_id is not None else ""
        return ident if ident.strip("A=") else None  # (all zeros: no id)

    def topics(self, timeout: float = 10.0) -> list[str]:
        return sorted(self._a.list_topics(timeout=timeout).topics)


class TransactionalProducer(Producer):
    """A transactional producer with a stable ``transactional.id`` (Kafka egress).

    ``init`` fences an earlier producer of the same id and resolves its open transaction
    (Kafka aborts it; Tansu, the test broker, makes it visible). Every error is raised as
    ``KafkaError``; after one, the caller drops the producer and builds a new one (never
    ``abort``: on Tansu an aborted transaction's records stay visible).
    ``produce`` (inherited) records the offset of each delivered record in ``delivered``,
    by (topic, partition): the highest offset plus one, known after ``flush``.
    """

    def __init__(self, properties: Mapping[str, str], transactional_id: str) -> None:
        conf: dict[str, object] = {
            "linger.ms": 5,
            "transaction.timeout.ms": 60_000,
            **properties,
            "transactional.id": transactional_id,
            "enable.idempotence": True,
        }
        try:
            self._p = ck.Producer(conf)
        except ck.KafkaException as e:
            raise _wrap(e) from None
        self._errors: list[str] = []
        self.delivered: dict[tuple[str, int], int] = {}

    def _on_delivery(self, err: ck.KafkaError | None, msg: ck.Message) -> None:
        if err is not None:
            self._errors.append(err.str())
            return
        # (a delivered record has its topic, partition and offset)
        tp = (cast(str, msg.topic()), cast(int, msg.partition()))
        offset = msg.offset()
        if offset is None:  # (Tansu on S3 acknowledges so a record it lost in a SIGKILL)
            self._errors.append(f"{tp[0]}[{tp[1]}]: acknowledged with no offset: unknown outcome")
            return
        end = offset + 1
        if end > self.delivered.get(tp, -1):
            self.delivered[tp] = end

    def init(self, timeout: float = 30.0) -> None:
        try:
            self._p.init_transactions(timeout)
        except ck.KafkaException as e:
            raise _wrap(e) from None

    def begin(self) -> None:
        try:
            self._p.begin_transaction()
        except ck.KafkaException as e:
            raise _wrap(e) from None

    def commit(self, timeout: float = 30.0) -> None:
        try:
            self._p.commit_transaction(timeout)
        except ck.KafkaException as e:
            raise _wrap(e) from None
        self._raise_delivery_errors()

    def partitions(self, topic: str, timeout: float = 10.0) -> list[int] | None:
        """The topic's partitions, or None if the topic does not exist."""
        return _partitions(self._p, topic, timeout)

    def close(self) -> None:
        self._p.flush(0)
