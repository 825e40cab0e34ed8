"""The physical partitions of a broker (DESIGN.md, "Physical partitions").

Each partition is a log (a Kafka partition of the log topic, or a directory), tables of its
own (a RocksDB with the applied position in every write batch), a processor and its timers:
it is opened, replayed, led and closed on its own. An invocation belongs to the partition its
partition key names; effects on invocations of another partition travel through the source's
``shuffle`` table (partition/lifecycle/shuffle.py), sent by the ``Shuffler`` here.

With one partition (the embedded log's default) the broker is what it always was: one log in
``log/``, one RocksDB in ``db/``, and everything local.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from sluice.broker.log import Log
from sluice.broker.partition._records import Routed, ShuffleDelivered
from sluice.broker.partition.lifecycle.shuffle import SEEN, outgoing
from sluice.broker.partition.processor import Processor
from sluice.broker.snapshots import Snapshots
from sluice.broker.storage import RocksDBStore, Store
from sluice.broker.timers import TimerService

_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
log = logging.getLogger("sluice.partitions")


@dataclass(eq=False)
class Partition:
    index: int
    log: Log
    store: RocksDBStore
    processor: Processor
    timers: TimerService
    snapshots: Snapshots | None  # with --snapshots
    snapped: int = 0  # the LSN of the newest snapshot taken or restored
    snapped_at: float = field(default_factory=time.monotonic)
    snapshot_error: str | None = None  # why the last snapshot failed, if it did

    def seen_from(self, source: int) -> int:
        """The last shuffle sequence this partition applied from ``source``."""
        raw = self.store.get("meta", SEEN + _U32.pack(source))
        return _U64.unpack(raw)[0] if raw else 0


class Tables(Store):
    """Every partition's tables as one, read-only: what the admin API, the SQL tables and the
    activity report list. Keys of different partitions never meet (an invocation, an object
    key, a timer belong to one), so a scan is each partition's scan in turn."""

    def __init__(self, stores: Sequence[Store]) -> None:
        self.stores = list(stores)

    def get(self, cf: str, key: bytes) -> bytes | None:
        for s in self.stores:
            found = s.get(cf, key)
            if found is not None:
                return found
        return None

    def scan(self, cf: str, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        for s in self.stores:
            yield from s.scan(cf, prefix)

    def write(self, changes: dict[tuple[str, bytes], bytes | None]) -> None:
        raise TypeError("the tables of all partitions are read only; write through a log")

    def close(self) -> None:
        pass  # (each partition closes its own)


class Shuffler:
    """Sends one partition's ``shuffle`` rows to the logs of their target partitions.

    Woken by ``ShuffleReady``; each round it first records what the targets applied already
    (``ShuffleDelivered``, a proposal of the source's leader: the rows go), then appends what
    was not sent yet. A target applies a source's rows once each, in order (``Routed``), so a
    row sent again after a restart is harmless. (The targets are partitions of this process:
    whether one applied a row is read from its tables.)"""

    def __init__(self, source: Partition, partitions: Sequence[Partition]) -> None:
        self.source = source
        self.partitions = partitions
        self._sent: dict[int, int] = {}  # target -> last seq appended by this process
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())
        self._wake.set()  # rows left by the last process

    def ready(self) -> None:
        self._wake.set()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self._round():
                await asyncio.sleep(0.05)  # rows in flight: look again for their delivery
                self._wake.set()

    def _round(self) -> bool:
        """Send and acknowledge once; whether rows remain."""
        src = self.source
        left = False
        for target in self.partitions:
            if target is src:
                continue
            rows = list(outgoing(src.store, target.index))
            if not rows:
                continue
            seen = target.seen_from(src.index)
            if rows[0][0] <= seen:
                upto = max(seq for seq, _ in rows if seq <= seen)
                src.processor.propose(ShuffleDelivered(target=target.index, upto=upto))
            sent = max(self._sent.get(target.index, 0), seen)
            for seq, command in rows:
                if seq > sent:
                    target.processor.submit(Routed(source=src.index, seq=seq, command=command))
                    sent = seq
            self._sent[target.index] = sent
            left = left or rows[-1][0] > seen
        return left
