"""An append-only segmented file log with group commit.

Segments are files named by the first LSN they hold; each is a sequence of frames

    +----------+---------+----------+----------------+-----------------+
    | len u32  | crc u32 | lsn u64  | timestamp u64  | payload (len)   |
    +----------+---------+----------+----------------+-----------------+

The crc covers lsn, timestamp and payload. On open, a torn tail of the last segment (a crash
in the middle of a write) is cut off: it was never fsync'd, so nobody was told. A bad frame
that valid frames follow is not a torn tail but corruption (a bad sector, a stray write):
cutting there would drop entries that were acknowledged, so the log refuses to open
(``LogCorrupted``) and says what to restore. A bad frame in a sealed segment is corruption
too: a segment is sealed only after everything in it was synced.

    segment 1 (sealed)   segment 812 (sealed)   segment 1903 (active)
    [1 ......... 811]    [812 ....... 1902]     [1903 ...... tail)
          ^ trim(lsn) deletes whole segments whose records are all <= lsn

Group commit: appends during one event-loop turn go into one buffer; the buffer is written
and fdatasync'd in a worker thread, one sync for the whole batch. Appends that arrive while a
sync is running form the next batch. Segments roll over between batches.

A failed write or sync is never retried (the kernel may already have dropped the pages it
could not write, and a second fsync would report success): the log fails for good with a
``LogError``, the batch is not acknowledged, and the owner is told through ``on_failed``.
The next process cuts what did not reach the disk and goes on from there.
"""

from __future__ import annotations

import asyncio
import os
import struct
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

from sluice.broker import faults
from sluice.broker.errors import Fatal, LogError
from sluice.broker.ids import Lsn

from ._base import Log, Record

_HEAD = struct.Struct(">II")
_META = struct.Struct(">QQ")
_SUFFIX = ".seg"
_FRAME = 24  # header and meta bytes before the payload


class LogCorrupted(LogError):
    """The log holds a damaged frame that is not a torn tail: it cannot be opened."""


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
        self._on_failed: Callable[[Fatal], None] | None = None
        self._repaired = False
        self._idle = asyncio.Event()
        self._idle.set()
        self._failed: Fatal | None = None
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

    def open(
        self,
        on_durable: Callable[[list[Record]], None],
        *,
        on_failed: Callable[[Fatal], None] | None = None,
    ) -> None:
        self._on_durable = on_durable
        self._on_failed = on_failed
        segs = self._segments()
        if not segs:
            self._open_segment(1)
            return
        path = segs[-1][1]
        size, last = self._repair()
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        os.lseek(self._fd, size, os.SEEK_SET)
        self._size = size
        self._tail = Lsn(last + 1)

    def _repair(self) -> tuple[int, int]:
        """Cut a torn tail off the last segment (once); return its valid size and last LSN.
        Raise ``LogCorrupted`` if what follows the first bad frame holds a valid one."""
        segs = self._segments()
        first, path = segs[-1]
        size, last = 0, first - 1
        scan = _Scan(path)
        for rec, end in scan:
            last, size = rec.lsn, end
        if self._repaired or scan.bad is None:
            return size, last
        found = _valid_frame_after(path, size, last)
        if found is not None:
            raise LogCorrupted(
                f"the log segment {path} is damaged at byte {size} (after LSN {last}), but a "
                f"valid frame (LSN {found[1]}) follows at byte {found[0]}: this is corruption, "
                "not a torn write, and cutting it would lose acknowledged entries. Restore the "
                "data directory (log/ and db/ together) from a backup, or move the segment "
                "aside knowingly"
            )
        fd = os.open(path, os.O_RDWR)
        try:
            os.ftruncate(fd, size)
            os.fsync(fd)
        finally:
            os.close(fd)
        self._repaired = True
        return size, last

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
        if segs:
            self._repair()  # a torn tail is cut before anything reads past it
        for i, (_, path) in enumerate(segs):
            nxt = segs[i + 1][0] if i + 1 < len(segs) else None
            if nxt is not None and nxt <= lsn:
                continue
            scan = _Scan(path)
            for rec, _ in scan:
                if rec.lsn >= lsn:
                    yield rec
            if scan.bad is not None and nxt is not None:
                raise LogCorrupted(
                    f"the sealed log segment {path} is damaged at byte {scan.bad}: {scan.why}. "
                    "Everything in a sealed segment was synced, so this is corruption; restore "
                    "the data directory (log/ and db/ together) from a backup"
                )

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
            raise LogError("the log failed earlier; the broker must restart", self._failed)
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
            faults.check("log-fsync")
            os.fdatasync(self._fd)

    def _flushed(self, fut: asyncio.Future[None], batch: list[Record]) -> None:
        self._flushing = False
        exc = fut.exception()
        if exc is not None:
            what = f"the log could not write or sync LSNs {batch[0].lsn}-{batch[-1].lsn}"
            self._fail(LogError(what, exc))
            return
        faults.reached("after-log-append")
        assert self._on_durable is not None
        try:
            self._on_durable(batch)
        except Fatal as e:  # the tables failed to apply what the log holds: stop here too
            self._fail(e)
            return
        if self._pending:
            self._start_flush()
        else:
            self._idle.set()

    def _fail(self, exc: Fatal) -> None:
        self._failed = exc
        self._pending, self._buffer = [], bytearray()  # never acknowledged, never written
        self._idle.set()
        if self._on_failed is None:
            raise exc
        self._on_failed(exc)

    def status(self) -> dict[str, object]:
        segments = self._segments()
        return {
            "kind": "embedded",
            "directory": str(self._dir),
            "start": int(segments[0][0]) if segments else int(self._tail),
            "tail": int(self._tail),
            "segments": len(segments),
        }

    @property
    def failed(self) -> Fatal | None:
        """Why the log stopped taking appends (None: it works)."""
        return self._failed

    async def close(self) -> None:
        await self._idle.wait()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class _Scan:
    """The records of one segment with the file offset after each. Iteration stops at the
    first frame that is short or fails its CRC; then ``bad`` is its offset and ``why`` says
    what was wrong with it."""

    def __init__(self, path: Path, chunk: int = 4 << 20) -> None:
        self.path = path
        self.chunk = chunk
        self.bad: int | None = None
        self.why = ""

    def __iter__(self) -> Iterator[tuple[Record, int]]:
        with open(self.path, "rb") as f:
            buf = b""
            base = 0  # file offset of buf[0]
            eof = False
            while True:
                pos = 0
                n = len(buf)
                while pos + _FRAME <= n:
                    length, crc = _HEAD.unpack_from(buf, pos)
                    end = pos + _FRAME + length
                    if end > n:
                        break
                    body = buf[pos + 8 : end]
                    if zlib.crc32(body) != crc:
                        self.bad, self.why = base + pos, "a frame fails its CRC"
                        return
                    lsn, ts = _META.unpack_from(body)
                    yield Record(Lsn(lsn), ts, bytes(body[16:])), base + end
                    pos = end
                if eof:
                    if pos < n:
                        self.bad, self.why = base + pos, f"{n - pos} bytes of a partial frame"
                    return
                more = f.read(max(self.chunk, n - pos + _FRAME))
                if not more:
                    eof = True
                buf = buf[pos:] + more
                base += pos


def _valid_frame_after(path: Path, start: int, last: int) -> tuple[int, int] | None:
    """(offset, lsn) of a whole, CRC-valid frame with an LSN above ``last`` somewhere after
    byte ``start`` of a segment, or None. A torn write leaves none (what follows the tear is
    the rest of one unsynced write, cut short); corruption in the middle leaves the synced
    frames behind it intact.

    Candidates are found with the high bytes of the expected LSNs (those of last+1 and the
    next 2^16 block), so a search over a long tail costs a few C scans, not a Python loop per
    byte."""
    data = path.read_bytes()
    seen: set[int] = set()
    for lsn in (last + 1, last + 1 + (1 << 16)):
        prefix = _META.pack(lsn, 0)[:6]
        i = data.find(prefix, start + 1 + 8)
        while i >= 0:
            pos = i - 8
            if pos not in seen:
                seen.add(pos)
                length, crc = _HEAD.unpack_from(data, pos)
                end = pos + _FRAME + length
                if end <= len(data) and zlib.crc32(data[pos + 8 : end]) == crc:
                    found = _META.unpack_from(data, pos + 8)[0]
                    if found > last:
                        return pos, found
            i = data.find(prefix, i + 1)
    return None
