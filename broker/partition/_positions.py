"""Where each subscription partition stands: the ``kafka_dedup`` row.

    kafka_dedup: producer id (subscription, topic, partition) ─► u64 last offset
                                                               [u64 epoch, topic id]

``last`` is the highest offset already in the log: a record at or below it is a duplicate.
``epoch`` counts the times the topic was found recreated under the subscription and
started over (ingress/kafka/_consumer.py decides that; the command that says so carries
the new epoch): offsets begin again at 0, so a new epoch forgets ``last``, and it is part of
the records' invocation ids, which would otherwise repeat the old topic's. ``topic id``: the
topic's id as Kafka reported it when its records were read (empty: not known), so that a
restart can tell a recreated topic from the same one.

A row of 8 bytes is the first format (epoch 0, no topic id).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from sluice.broker.storage import Store, Transaction

_U64 = struct.Struct(">Q")
_POSITION = struct.Struct(">QQ")
_NONE = (1 << 64) - 1  # ``last`` of a position with no record yet


@dataclass(slots=True)
class KafkaPosition:
    last: int = -1  # the highest offset in the log; -1: none yet
    epoch: int = 0
    topic_id: str = ""

    def encode(self) -> bytes:
        last = self.last if self.last >= 0 else _NONE
        if not self.epoch and not self.topic_id:
            return _U64.pack(last)
        return _POSITION.pack(last, self.epoch) + self.topic_id.encode()

    @classmethod
    def decode(cls, raw: bytes | None) -> KafkaPosition:
        if raw is None:
            return cls()
        if len(raw) == _U64.size:
            last, epoch, ident = _U64.unpack(raw)[0], 0, ""
        else:
            last, epoch = _POSITION.unpack_from(raw)
            ident = raw[_POSITION.size :].decode()
        return cls(last=-1 if last == _NONE else last, epoch=epoch, topic_id=ident)

    def id_parts(self) -> tuple[bytes, ...]:
        """What the epoch adds to the parts of an invocation id (nothing for epoch 0, so
        that ids from before epochs existed stay the same)."""
        return (_U64.pack(self.epoch),) if self.epoch else ()


def read_position(store: Store | Transaction, producer: bytes) -> KafkaPosition:
    return KafkaPosition.decode(store.get("kafka_dedup", producer))


def begin(tx: Transaction, producer: bytes, epoch: int, topic_id: str) -> KafkaPosition | None:
    """The position that a command of ``epoch`` (and ``topic_id``, if known) applies to:
    a newer epoch starts from nothing, an older one is stale (None: its records were read
    before the topic was found recreated, and are not the new topic's)."""
    pos = read_position(tx, producer)
    if epoch < pos.epoch:
        return None
    if epoch > pos.epoch:
        pos = KafkaPosition(epoch=epoch, topic_id=topic_id or pos.topic_id)
        tx.put("kafka_dedup", producer, pos.encode())
    elif topic_id and pos.topic_id != topic_id:
        pos.topic_id = topic_id  # (the consumer compared them: this is the same topic)
        tx.put("kafka_dedup", producer, pos.encode())
    return pos


def advance(tx: Transaction, producer: bytes, pos: KafkaPosition, last: int) -> None:
    """Records up to ``last`` are in the log now."""
    if last > pos.last:
        pos.last = last
        tx.put("kafka_dedup", producer, pos.encode())
