"""The durable log: the ground truth every table is derived from."""

from ._base import Log, Record
from ._embedded import EmbeddedLog

__all__ = ["EmbeddedLog", "Log", "Record"]
