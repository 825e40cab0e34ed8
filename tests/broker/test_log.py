"""The embedded log: group commit, durability callback order, recovery, torn tails."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from broker.log import EmbeddedLog, Record


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
