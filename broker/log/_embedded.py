"""An append-only segmented file log with group commit.

Segments are files named by the first LSN they hold; each is a sequence of frames

    +----------+---------+----------+----------------+-----------------+
    | len u32  | crc u32 | lsn u64  | timestamp u64  | payload (len)   |
    +----------+---------+----------+----------------+-----------------+

The crc covers lsn, timestamp and payload. On open, a torn or corrupt tail of the last segment
(a crash in the middle of a write) is cut off: it was never fsync'd, so nobody was told.

    segment 1 (sealed)   segment 812 (sealed)   segment 1903 (active)
    [1 ......... 811]    [812 ....... 1902]     [1903 ...... tail)
          ^ trim(lsn) deletes whole segments whose records are all <= lsn

Group commit: appends during one event-loop turn go into one buffer; the buffer is written
and fdatasync'd in a worker thread, one sync for the whole batch. Appends that arrive while a
sync is running form the next batch. Segments roll over between batches.
"""

from __future__ import annotations

import asyncio
import os
import struct
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

from broker import faults
from broker.ids import Lsn

from ._base import Log, Record

_HEAD = struct.Struct(">II")
_META = struct.Struct(">QQ")
_SUFFIX = ".seg"


class EmbeddedLog(Log):
    def __init__(
        self, directory: Path, *, fsync: bool = True, segment_bytes: int = 64 << 20
    ) -> None:
        self._dir = Path(directory)
        self._dir.mkdir(parents=True, exist_ok=True)
        self._fsync = fsync
        self._segment_bytes = segment_bytes
        self._fd = -1
        self._size = 0
        self._tail = Lsn(1)
        self._pending: list[Record] = []
        self._buffer = bytearray()
        self._flushing = False
        self._scheduled = False
        self._on_durable: Callable[[list[Record]], None] | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        self._failed: BaseException | None = None
        self._migrate_single_file()

    def _migrate_single_file(self) -> None:
        # Data directories from before segments had one log.bin starting at LSN 1.
        old = self._dir / "log.bin"
        if old.exists() and not self._segments():
            old.rename(self._dir / f"{1:020d}{_SUFFIX}")

    def _segments(self) -> list[tuple[int, Path]]:
        out = []
        for p in self._dir.iterdir():
            if p.suffix == _SUFFIX and p.stem.isdigit():
                out.append((int(p.stem), p))
        return sorted(out)

    def open(self, on_durable: Callable[[list[Record]], None]) -> None:
        self._on_durable = on_durable
        segs = self._segments()
        if not segs:
            self._open_segment(1)
            return
        first, path = segs[-1]
        size, last = 0, first - 1
        for rec, end in _scan(path):
            last, size = rec.lsn, end
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        if os.fstat(self._fd).st_size != size:
            os.ftruncate(self._fd, size)
            os.fsync(self._fd)
        os.lseek(self._fd, size, os.SEEK_SET)
        self._size = size
        self._tail = Lsn(last + 1)

    def _open_segment(self, first: int) -> None:
        if self._fd >= 0:
            os.close(self._fd)
        self._fd = os.open(self._dir / f"{first:020d}{_SUFFIX}", os.O_RDWR | os.O_CREAT, 0o644)
        self._size = 0
        dfd = os.open(self._dir, os.O_RDONLY)
        try:
            os.fsync(dfd)  # the new segment's name is durable before anything is acknowledged
        finally:
            os.close(dfd)

    def read_from(self, lsn: Lsn) -> Iterator[Record]:
        segs = self._segments()
        for i, (_, path) in enumerate(segs):
            nxt = segs[i + 1][0] if i + 1 < len(segs) else None
            if nxt is not None and nxt <= lsn:
                continue
            for rec, _ in _scan(path):
                if rec.lsn >= lsn:
                    yield rec

    def trim(self, lsn: Lsn) -> int:
        """Delete sealed segments holding only records <= lsn; return how many went."""
        segs = self._segments()
        gone = 0
        for i in range(len(segs) - 1):
            if segs[i + 1][0] - 1 <= lsn:
                segs[i][1].unlink(missing_ok=True)
                gone += 1
            else:
                break
        return gone

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
        fut = asyncio.get_running_loop().run_in_executor(None, self._write, data, batch[0].lsn)
        fut.add_done_callback(lambda f: self._flushed(f, batch))

    def _write(self, data: bytes, first_lsn: int) -> None:
        if self._size >= self._segment_bytes:
            self._open_segment(first_lsn)
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        self._size += len(data)
        if self._fsync:
            os.fdatasync(self._fd)

    def _flushed(self, fut: asyncio.Future[None], batch: list[Record]) -> None:
        self._flushing = False
        exc = fut.exception()
        if exc is not None:
            self._failed = exc
            self._idle.set()
            raise exc
        faults.reached("after-log-append")
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


def _scan(path: Path, chunk: int = 4 << 20) -> Iterator[tuple[Record, int]]:
    """Records of one segment with the file offset after each; stops at a torn tail."""
    with open(path, "rb") as f:
        buf = b""
        base = 0  # file offset of buf[0]
        eof = False
        while True:
            pos = 0
            n = len(buf)
            while pos + 24 <= n:
                length, crc = _HEAD.unpack_from(buf, pos)
                end = pos + 24 + length
                if end > n:
                    break
                body = buf[pos + 8 : end]
                if zlib.crc32(body) != crc:
                    return
                lsn, ts = _META.unpack_from(body)
                yield Record(Lsn(lsn), ts, bytes(body[16:])), base + end
                pos = end
            if eof:
                return
            more = f.read(max(chunk, n - pos + 24))
            if not more:
                eof = True
            buf = buf[pos:] + more
            base += pos
