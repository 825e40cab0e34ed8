"""An egress sink: one transactional producer per (cluster, egress partition), exactly once.

    one transaction:  records (headers sluice-producer, sluice-seq, sluice-part) ─► flush
                      ─► marker on the progress topic ─► commit

The marker says what is committed: every outbox row up to ``seq``, and per lane past it the
last row sent (``lanes``: rows are sent in order within a lane, so that is a prefix of it);
``failed``, the records that these transactions left out because they did not fit their
format, with the reason, until the broker's log holds their dead letters (a recovery must
not encode them again: the registry may have changed since); ``ends``, per output partition
an offset below our first record not yet covered by a marker.

The marker rides in the same transaction as its records: Kafka shows both or neither. On a
restart, ``recover`` re-initializes the same transactional id (fencing the old producer and
resolving its open transaction), reads the last committed marker back with read_committed,
and resumes after it. Tansu (the test broker) makes a dead producer's open transaction
visible instead of aborting it; the records are flushed before the marker is written, so a
visible marker means all of its records are visible, and records past the marker that became
visible are found by scanning the output partitions from the marker's offsets (``visible``)
and are not sent again.

Calls block: callers run them in a thread. Never ``abort``: on Tansu an aborted
transaction's records stay visible. After an error the caller calls ``recover`` again.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ._client import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaMessage,
    TopicAdmin,
    TopicPartitionOffset,
    TransactionalProducer,
)

H_PRODUCER = "sluice-producer"
H_SEQ = "sluice-seq"
H_PART = "sluice-part"

PROGRESS_TOPIC = "sluice-egress-progress"
STALLED_READ_S = 2.0  # a recovery read that makes no progress this long gives up (retriable)


@dataclass(slots=True)
class OutRecord:
    """One record to send; (seq, part) is its position in the sink's outbox."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]
    seq: int
    part: int


@dataclass(slots=True)
class Progress:
    """What the last committed marker says (the module's docstring)."""

    seq: int = 0  # every row up to it is committed (0: none)
    lanes: dict[int, int] = field(default_factory=dict)  # lane -> its last row committed
    failed: list[tuple[int, int, str]] = field(default_factory=list)  # (seq, part, reason)

    def committed(self, seq: int, lane: int) -> bool:
        return seq <= self.seq or seq <= self.lanes.get(lane, 0)


@dataclass(slots=True)
class Recovered:
    progress: Progress
    visible: set[tuple[int, int]] = field(default_factory=set)  # (seq, part) past it, in Kafka

    @property
    def seq(self) -> int:
        return self.progress.seq


class EgressSink:
    def __init__(
        self,
        properties: Mapping[str, str],
        *,
        producer_id: str,
        marker_partition: int,
        progress_partitions: int,
        progress_topic: str = PROGRESS_TOPIC,
        before_commit: Callable[[], None] | None = None,
    ) -> None:
        self.properties = dict(properties)
        self.producer_id = producer_id
        self.marker_partition = marker_partition % progress_partitions
        self.progress_partitions = progress_partitions
        self.progress_topic = progress_topic
        # Per output partition, an offset at or below our first record there that is not
        # yet in a committed marker; a topic is listed (partition -1) before it is written.
        self.ends: dict[tuple[str, int], int] = {}
        self.committed = Progress()  # the last committed marker
        self.transactions = 0
        self._p: TransactionalProducer | None = None
        self._wm: Consumer | None = None  # for watermarks, read_uncommitted
        # Called with records and marker in Kafka, before the commit (a crash test's fault
        # point; this package does not import the broker's).
        self._before_commit = before_commit or (lambda: None)

    @property
    def ready(self) -> bool:
        return self._p is not None

    # --- recovery ------------------------------------------------------------------------

    def recover(self, pending_topics: Iterable[str], *, fresh: bool = False) -> Recovered:
        """Fence the previous producer, read the committed marker, and find records past it
        that are visible anyway (Tansu).

        ``fresh``: this producer id is new (never used by any process), so Kafka holds
        nothing of it and nothing is read; a read would wait for other producers'
        undecided transactions on the progress partition."""
        if self._p is not None:
            self._p.close()
            self._p = None
        TopicAdmin(self.properties).create_topic(
            self.progress_topic, self.progress_partitions, config={"cleanup.policy": "compact"}
        )
        prod = TransactionalProducer(self.properties, self.producer_id)
        prod.init()
        marker: dict[str, Any] = (None if fresh else self._read_marker()) or {}
        seq = int(marker.get("seq", 0))
        self.committed = Progress(
            seq,
            {int(lane): int(s) for lane, s in marker.get("lanes", [])},
            [(int(s), int(part), str(why)) for s, part, why in marker.get("failed", [])],
        )
        self.ends = {(t, int(n)): int(o) for t, n, o in marker.get("ends", [])}
        visible: set[tuple[int, int]] = set()
        known = {t for t, _ in self.ends}
        tps = []
        # A topic the marker does not list was never written (``_announce``): nothing to scan.
        for topic in sorted(set(pending_topics) & known):
            for n in prod.partitions(topic) or []:
                start = self.ends.get((topic, n), OFFSET_BEGINNING)
                tps.append(TopicPartitionOffset(topic, n, start))
        if tps:
            for m in self._read(tps):
                h = dict(m.headers)
                if h.get(H_PRODUCER) != self.producer_id.encode():
                    continue
                s, part = int(h.get(H_SEQ) or 0), int(h.get(H_PART) or 0)
                if s > seq:  # (rows of lanes committed past seq are trimmed, not sent)
                    visible.add((s, part))
                    tp = (m.topic, m.partition)
                    self.ends[tp] = max(self.ends.get(tp, 0), m.offset + 1)
        self._p = prod
        return Recovered(self.committed, visible)

    def _consumer(self, isolation: str = "read_committed") -> Consumer:
        return Consumer(
            {
                **self.properties,
                "group.id": f"{self.producer_id}-recovery",
                "isolation.level": isolation,
            }
        )

    def _watermarks(self, topic: str, partition: int) -> tuple[int, int]:
        """The partition's low and high watermarks. Asked through a read_uncommitted
        consumer: a read_committed one gets the last stable offset as its high watermark,
        which stops below another producer's undecided transaction (and is 0 on Tansu), so
        a read to it would miss what lies beyond."""
        if self._wm is None:
            self._wm = self._consumer("read_uncommitted")
        return self._wm.watermarks(topic, partition)

    def _read_marker(self) -> dict[str, Any] | None:
        c = self._consumer()
        try:
            lo, hi = self._watermarks(self.progress_topic, self.marker_partition)
            window = 256
            while True:
                start = max(lo, hi - window)
                found = None
                tp = TopicPartitionOffset(self.progress_topic, self.marker_partition, start)
                for m in self._read([tp], c, {(tp.topic, tp.partition): hi}):
                    if m.key == self.producer_id.encode() and m.value:
                        found = m.value
                if found is not None:
                    value: dict[str, Any] = json.loads(found)
                    return value
                if start <= lo:
                    return None
                window *= 8
        finally:
            c.close()

    def _read(
        self,
        tps: list[TopicPartitionOffset],
        c: Consumer | None = None,
        highs: dict[tuple[str, int], int] | None = None,
    ) -> list[KafkaMessage]:
        """Every committed record from the given offsets to the end of each partition.

        Raises a retriable KafkaError if a partition cannot be read to its end: another
        producer's undecided transaction holds read_committed below it (Kafka aborts it after
        that producer's transaction timeout; Tansu resolves it only when that producer
        initializes again). A partial read could miss our own marker or records and send
        them twice: recovery waits instead."""
        own = c is None
        c = c or self._consumer()
        try:
            if highs is None:
                highs = {
                    (t.topic, t.partition): self._watermarks(t.topic, t.partition)[1] for t in tps
                }
            todo = {
                (t.topic, t.partition)
                for t in tps
                if highs[(t.topic, t.partition)] > max(t.offset, 0)
            }
            c.assign(tps)
            out: list[KafkaMessage] = []
            moved, last = time.monotonic(), None
            while todo:
                msgs = c.consume(1000, 0.05)
                out += msgs
                # The position moves past transaction markers (control records), which take
                # offsets but are never delivered: a partition is read when it reaches the end.
                at = c.positions([TopicPartitionOffset(t, n) for t, n in todo])
                todo = {tp for tp in todo if at.get(tp, -1) < highs[tp]}
                if msgs or at != last:
                    moved, last = time.monotonic(), at
                elif time.monotonic() - moved > STALLED_READ_S:
                    where = ", ".join(
                        f"{t}[{n}] at {at.get((t, n))} of {highs[(t, n)]}" for t, n in sorted(todo)
                    )
                    raise KafkaError(
                        f"cannot read {where}: an undecided transaction of another producer "
                        "holds read_committed back; retrying",
                        retriable=True,
                    )
            return out
        finally:
            if own:
                c.close()

    # --- sending -------------------------------------------------------------------------

    def _marker(self, progress: Progress) -> bytes:
        marker = {
            "seq": progress.seq,
            "lanes": sorted(progress.lanes.items()),
            "failed": progress.failed,
            "ends": [[t, n, o] for (t, n), o in sorted(self.ends.items())],
        }
        return json.dumps(marker, separators=(",", ":")).encode()

    def send(self, records: list[OutRecord], progress: Progress) -> None:
        """One transaction: the records, then the marker ``progress``; committed or raised."""
        prod = self._p
        if prod is None:
            raise KafkaError("the egress sink is not recovered", retriable=True)
        pid = self.producer_id.encode()
        try:
            new = {r.topic for r in records} - {t for t, _ in self.ends}
            if new:
                self._announce(prod, new)
            prod.begin()
            seq_text: dict[int, bytes] = {}
            prod.produce_many(
                (
                    r.topic,
                    r.key,
                    r.value,
                    [
                        *r.headers,
                        (H_PRODUCER, pid),
                        (H_SEQ, seq_text.get(r.seq) or seq_text.setdefault(r.seq, b"%d" % r.seq)),
                        (H_PART, b"%d" % r.part),
                    ],
                )
                for r in records
            )
            # Flushed before the marker: a visible marker implies visible records (Tansu).
            prod.flush()
            for tp, end in prod.delivered.items():
                if tp[0] != self.progress_topic:
                    self.ends[tp] = end
            marker = self._marker(progress)
            prod.produce(self.progress_topic, marker, key=pid, partition=self.marker_partition)
            self.transactions += 1
            prod.flush()
            self._before_commit()
            prod.commit()
            self.committed = progress
        except KafkaError:
            self._p = None
            raise

    def _announce(self, prod: TransactionalProducer, topics: set[str]) -> None:
        """Before the first records to a topic: commit a marker that lists the topic's
        current end offsets, so that a recovery scans only from there (and never scans a
        topic that is not listed)."""
        for topic in sorted(topics):
            self.ends[(topic, -1)] = 0
            for n in prod.partitions(topic) or []:
                self.ends[(topic, n)] = self._watermarks(topic, n)[1]
        prod.begin()
        prod.produce(
            self.progress_topic,
            self._marker(self.committed),
            key=self.producer_id.encode(),
            partition=self.marker_partition,
        )
        prod.commit()

    def close(self) -> None:
        if self._p is not None:
            self._p.close()
            self._p = None
        if self._wm is not None:
            self._wm.close()
            self._wm = None
