"""The durable log: the ground truth every table is derived from."""

from ._base import Log, Record
from ._embedded import EmbeddedLog, LogCorrupted

__all__ = ["EmbeddedLog", "Log", "LogCorrupted", "Record"]
