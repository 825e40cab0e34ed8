from __future__ import annotations

import abc
from collections.abc import Iterable


class DecodeError(ValueError):
    """A record value this serde cannot read. ``reason`` is short and goes into the
    dead-letter record's ``sluice-reason`` header."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Serde(abc.ABC):
    """One format. ``decode`` validates a Kafka value and returns the handler input bytes;
    ``encode`` does the reverse for egress. Both raise ``DecodeError`` on bad data."""

    name: str
    content_type: str

    @abc.abstractmethod
    def decode(self, value: bytes | None) -> bytes: ...

    @abc.abstractmethod
    def encode(self, payload: bytes) -> bytes: ...

    def prefetch(self, values: Iterable[bytes | None]) -> None:  # noqa: B027  (optional)
        """Do the blocking lookups (a schema registry) that decoding ``values`` needs, so
        that ``decode`` of them does no I/O: ingress calls it off the event loop. Raises
        ``RegistryError`` when a lookup cannot be answered now; the values then wait."""
