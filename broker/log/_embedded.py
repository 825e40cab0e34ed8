"""An append-only file log with group commit.

File layout: a sequence of frames, each

    +----------+---------+----------+----------------+-----------------+
    | len u32  | crc u32 | lsn u64  | timestamp u64  | payload (len)   |
    +----------+---------+----------+----------------+-----------------+

The crc covers lsn, timestamp and payload. On open, a torn or corrupt tail (a crash in the
middle of a write) is cut off: it was never fsync'd, so nobody was told about it.

Group commit: appends during one event-loop turn go into one buffer; the buffer is written
and fdatasync'd in a worker thread, one sync for the whole batch. Appends that arrive while a
sync is running form the next batch.
"""

from __future__ import annotations

import asyncio
import os
import struct
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

from broker.ids import Lsn

from ._base import Log, Record

_HEAD = struct.Struct(">II")
_META = struct.Struct(">QQ")


class EmbeddedLog(Log):
    def __init__(self, directory: Path, *, fsync: bool = True) -> None:
        self._path = Path(directory) / "log.bin"
        self._path.parent.mkdir(parents=True, exist_ok=True)
        self._fsync = fsync
        self._fd = -1
        self._tail = Lsn(1)
        self._pending: list[Record] = []
        self._buffer = bytearray()
        self._flushing = False
        self._scheduled = False
        self._on_durable: Callable[[list[Record]], None] | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        self._failed: BaseException | None = None

    def open(self, on_durable: Callable[[list[Record]], None]) -> None:
        self._on_durable = on_durable
        size = 0
        last = 0
        for rec, end in self._scan():
            last = rec.lsn
            size = end
        self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o644)
        if os.fstat(self._fd).st_size != size:
            os.ftruncate(self._fd, size)
            os.fsync(self._fd)
        os.lseek(self._fd, size, os.SEEK_SET)
        self._tail = Lsn(last + 1)

    def _scan(self) -> Iterator[tuple[Record, int]]:
        if not self._path.exists():
            return
        with open(self._path, "rb") as f:
            data = f.read()
        pos = 0
        n = len(data)
        while pos + 8 + 16 <= n:
            length, crc = _HEAD.unpack_from(data, pos)
            end = pos + 8 + 16 + length
            if end > n:
                break
            body = data[pos + 8 : end]
            if zlib.crc32(body) != crc:
                break
            lsn, ts = _META.unpack_from(body)
            yield Record(Lsn(lsn), ts, bytes(body[16:])), end
            pos = end

    def read_from(self, lsn: Lsn) -> Iterator[Record]:
        for rec, _ in self._scan():
            if rec.lsn >= lsn:
                yield rec

    @property
    def tail(self) -> Lsn:
        return self._tail

    def append(self, payload: bytes, timestamp: int) -> Lsn:
        if self._failed is not None:
            raise RuntimeError("the log failed to sync; the broker must restart") from self._failed
        lsn = self._tail
        self._tail = Lsn(lsn + 1)
        body = _META.pack(lsn, timestamp) + payload
        self._buffer += _HEAD.pack(len(payload), zlib.crc32(body))
        self._buffer += body
        self._pending.append(Record(lsn, timestamp, payload))
        if not self._scheduled and not self._flushing:
            self._scheduled = True
            self._idle.clear()
            asyncio.get_running_loop().call_soon(self._start_flush)
        return lsn

    def _start_flush(self) -> None:
        self._scheduled = False
        if self._flushing or not self._pending:
            return
        self._flushing = True
        batch, self._pending = self._pending, []
        data, self._buffer = bytes(self._buffer), bytearray()
        fut = asyncio.get_running_loop().run_in_executor(None, self._write, data)
        fut.add_done_callback(lambda f: self._flushed(f, batch))

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        if self._fsync:
            os.fdatasync(self._fd)

    def _flushed(self, fut: asyncio.Future[None], batch: list[Record]) -> None:
        self._flushing = False
        exc = fut.exception()
        if exc is not None:
            self._failed = exc
            self._idle.set()
            raise exc
        assert self._on_durable is not None
        try:
            self._on_durable(batch)
        finally:
            if self._pending:
                self._start_flush()
            else:
                self._idle.set()

    async def close(self) -> None:
        await self._idle.wait()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
