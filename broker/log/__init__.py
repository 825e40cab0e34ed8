"""The durable log: the ground truth every table is derived from."""

from ._base import Log, Record
from ._embedded import EmbeddedLog, LogCorrupted
from ._kafka import (
    KafkaLog,
    KafkaLogAddress,
    KafkaLogError,
    KafkaUnavailable,
    LogProducer,
    ensure_topic,
)

__all__ = [
    "EmbeddedLog",
    "KafkaLog",
    "KafkaLogAddress",
    "KafkaLogError",
    "KafkaUnavailable",
    "Log",
    "LogCorrupted",
    "LogProducer",
    "Record",
    "ensure_topic",
]
