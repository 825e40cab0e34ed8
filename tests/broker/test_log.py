"""The embedded log: group commit, durability callback order, recovery, torn tails."""

from __future__ import annotations

import asyncio
import errno
import os
from pathlib import Path

import pytest

from sluice.broker.errors import LogError
from sluice.broker.ids import Lsn
from sluice.broker.log import EmbeddedLog, LogCorrupted, Record


async def test_group_commit_one_sync_per_turn(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    syncs = 0
    real = os.fdatasync

    def counting(fd: int) -> None:
        nonlocal syncs
        syncs += 1
        real(fd)

    monkeypatch.setattr(os, "fdatasync", counting)
    log = EmbeddedLog(tmp_path)
    batches: list[list[Record]] = []
    done = asyncio.Event()

    def on_durable(recs: list[Record]) -> None:
        batches.append(recs)
        if sum(len(b) for b in batches) == 100:
            done.set()

    log.open(on_durable)
    lsns = [log.append(f"r{i}".encode(), 1000 + i) for i in range(100)]  # one loop turn
    assert lsns == list(range(1, 101))
    assert batches == []  # nothing is durable (or acted upon) before the sync
    await asyncio.wait_for(done.wait(), 5)
    assert syncs == 1
    assert [r.payload for r in batches[0]] == [f"r{i}".encode() for i in range(100)]
    await log.close()


async def test_recovery_and_torn_tail(tmp_path: Path) -> None:
    log = EmbeddedLog(tmp_path)
    got: list[Record] = []
    done = asyncio.Event()

    def on_durable(recs: list[Record]) -> None:
        got.extend(recs)
        if len(got) == 3:
            done.set()

    log.open(on_durable)
    for i in range(3):
        log.append(b"x" * i, i)
    await asyncio.wait_for(done.wait(), 5)
    await log.close()
    with open(sorted(tmp_path.glob("*.seg"))[-1], "ab") as f:  # noqa: ASYNC230, ASYNC240
        f.write(b"\x00\x00\x00\x10garbage")  # a write torn by a crash
    log2 = EmbeddedLog(tmp_path)
    assert [r.payload for r in log2.read_from(1)] == [b"", b"x", b"xx"]  # type: ignore[arg-type]
    log2.open(lambda recs: None)
    assert log2.tail == 4
    assert [r.lsn for r in log2.read_from(2)] == [2, 3]  # type: ignore[arg-type]
    await log2.close()


async def test_segments_roll_over_and_trim(tmp_path: Path) -> None:
    log = EmbeddedLog(tmp_path, segment_bytes=200)
    seen: list[Record] = []
    done = asyncio.Event()

    def on_durable(recs: list[Record]) -> None:
        seen.extend(recs)
        if len(seen) == 30:
            done.set()

    log.open(on_durable)
    for i in range(30):
        log.append(b"p" * 40, i)
        await asyncio.sleep(0)  # one batch per record: segments roll between batches
        while log._flushing:  # noqa: ASYNC110 - waiting on the writer thread in a test
            await asyncio.sleep(0.001)
    await asyncio.wait_for(done.wait(), 5)
    segments = sorted(tmp_path.glob("*.seg"))  # noqa: ASYNC240
    assert len(segments) > 3
    assert [r.lsn for r in log.read_from(12)] == list(range(12, 31))  # type: ignore[arg-type]
    gone = log.trim(20)  # type: ignore[arg-type]
    assert gone > 0
    first_left = next(r.lsn for r in log.read_from(1))  # type: ignore[arg-type]
    assert first_left <= 21, "trim dropped a record it was not allowed to"
    await log.close()
    reopened = EmbeddedLog(tmp_path, segment_bytes=200)
    reopened.open(lambda recs: None)
    assert reopened.tail == 31
    await reopened.close()


async def _write(directory: Path, payloads: list[bytes], **kw: int) -> None:
    """Append ``payloads`` one batch each (so that segments can roll between them)."""
    log = EmbeddedLog(directory, **kw)
    n = 0
    done = asyncio.Event()

    def on_durable(recs: list[Record]) -> None:
        nonlocal n
        n += len(recs)
        if n == len(payloads):
            done.set()

    log.open(on_durable)
    for i, payload in enumerate(payloads):
        log.append(payload, i)
        await asyncio.sleep(0)
        while log._flushing:  # noqa: ASYNC110 - waiting on the writer thread in a test
            await asyncio.sleep(0.001)
    await asyncio.wait_for(done.wait(), 5)
    await log.close()


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


async def test_a_damaged_frame_with_valid_frames_after_it_refuses_to_open(tmp_path: Path) -> None:
    """A torn tail is cut; a bad frame in the middle is corruption: the frames after it were
    synced and acknowledged, and cutting there would drop them."""
    await _write(tmp_path, [b"p%03d" % i * 10 for i in range(20)])
    [seg] = sorted(tmp_path.glob("*.seg"))  # noqa: ASYNC240
    frame = 24 + 40
    _flip(seg, 5 * frame + 30)  # a byte of the 6th frame's payload
    log = EmbeddedLog(tmp_path)
    with pytest.raises(LogCorrupted, match=r"damaged at byte 320 \(after LSN 5\).*LSN 7"):
        list(log.read_from(Lsn(1)))
    with pytest.raises(LogCorrupted):
        log.open(lambda recs: None)
    assert seg.stat().st_size == 20 * frame  # nothing was cut

    # The same damage in the last frame is a torn tail: cut, and the log opens.
    _flip(seg, 5 * frame + 30)
    _flip(seg, 19 * frame + 30)
    log = EmbeddedLog(tmp_path)
    assert [r.lsn for r in log.read_from(Lsn(1))] == list(range(1, 20))
    log.open(lambda recs: None)
    assert log.tail == 20 and seg.stat().st_size == 19 * frame
    await log.close()


async def test_a_damaged_sealed_segment_refuses_to_replay(tmp_path: Path) -> None:
    await _write(tmp_path, [b"x" * 100 for _ in range(10)], segment_bytes=300)
    segs = sorted(tmp_path.glob("*.seg"))  # noqa: ASYNC240
    assert len(segs) >= 3
    with open(segs[0], "r+b") as f:  # noqa: ASYNC230 - the last frame of a sealed segment
        f.truncate(segs[0].stat().st_size - 7)
    log = EmbeddedLog(tmp_path)
    with pytest.raises(LogCorrupted, match="sealed log segment"):
        list(log.read_from(Lsn(1)))


async def test_a_failed_sync_is_never_retried(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """fsyncgate: after a failed fdatasync the kernel may have dropped the pages, and a
    second fsync reports success. The batch is not acknowledged, the owner is told, and
    every later append fails instead of being synced "again"."""
    syncs = 0

    def failing(fd: int) -> None:
        nonlocal syncs
        syncs += 1
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fdatasync", failing)
    durable: list[Record] = []
    failed: list[BaseException] = []
    log = EmbeddedLog(tmp_path)
    log.open(durable.extend, on_failed=failed.append)
    log.append(b"a", 1)
    log.append(b"b", 2)
    async with asyncio.timeout(5):
        while not failed:  # noqa: ASYNC110 - on_failed is a plain callback
            await asyncio.sleep(0.01)
    assert isinstance(failed[0], LogError) and "LSNs 1-2" in str(failed[0])
    assert durable == [] and syncs == 1
    with pytest.raises(LogError, match="must restart"):
        log.append(b"c", 3)
    await asyncio.sleep(0.05)
    assert syncs == 1
    await log.close()
