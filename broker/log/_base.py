from __future__ import annotations

import abc
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from sluice.broker.errors import Fatal
from sluice.broker.ids import Lsn


@dataclass(slots=True, frozen=True)
class Record:
    """One log entry: its position, the append wall-clock time (ms) and an opaque payload."""

    lsn: Lsn
    timestamp: int
    payload: bytes


class Log(abc.ABC):
    """An append-only sequence of records with group commit.

    ``append`` returns at once; the record becomes durable with the next commit, and then the
    ``on_durable`` callback receives every record of that commit, in order. Nothing may be
    acted upon before that callback.

    A write that fails is never retried: the log stops taking appends (they raise
    ``LogError``) and ``on_failed`` receives the error; without it, the error is raised from
    the callback that met it.
    """

    # Whether the log survives the loss of the broker's disk (Kafka): then it is trimmed only
    # below a snapshot kept elsewhere, never because the local tables hold its effects.
    outlives_disk = False

    # Whether each record's LSN is the one before it plus one: a recovery that meets a hole
    # in such a log has lost records.
    gapless = True

    @abc.abstractmethod
    def open(
        self,
        on_durable: Callable[[list[Record]], None],
        *,
        on_failed: Callable[[Fatal], None] | None = None,
    ) -> None: ...

    @abc.abstractmethod
    def append(self, payload: bytes, timestamp: int) -> Lsn: ...

    @abc.abstractmethod
    def read_from(self, lsn: Lsn) -> Iterator[Record]:
        """Records with position >= lsn, oldest first (used on recovery)."""

    @abc.abstractmethod
    def trim(self, lsn: Lsn) -> int:
        """Drop what is no longer needed up to lsn (every table holds its effects)."""

    @property
    @abc.abstractmethod
    def tail(self) -> Lsn:
        """The position the next append gets."""

    def status(self) -> dict[str, object]:
        """What the log is and where it stands, for ``GET /health`` and ``sluice log status``."""
        return {"kind": type(self).__name__, "tail": self.tail}

    @abc.abstractmethod
    async def close(self) -> None: ...
