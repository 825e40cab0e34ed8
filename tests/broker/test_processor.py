"""The processor: durable batch in, one write batch with the applied position, actions out."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from sluice import protocol as p
from sluice.broker.errors import Fatal, LogError, StorageError
from sluice.broker.log import EmbeddedLog, LogCorrupted, Record
from sluice.broker.partition import actions as a
from sluice.broker.partition._context import Config
from sluice.broker.partition._records import (
    KafkaIngest,
    KafkaRecord,
    Kind,
    Manage,
    Phase,
    SchemaUpdate,
    Status,
    Terminate,
    encode_command,
)
from sluice.broker.partition.lifecycle.kafka import DeadLetter
from sluice.broker.partition.processor import APPLIED, RUNNING_INDEXED, Processor
from sluice.broker.partition.state_machine import StateMachine
from sluice.broker.schema import Registry
from sluice.broker.storage import MemoryStore, RocksDBStore


async def test_a_poison_entry_is_skipped_not_fatal(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = MemoryStore()
    got: list[a.Action] = []
    done = asyncio.Event()

    def act(actions: list[a.Action]) -> None:
        got.extend(actions)
        done.set()

    proc = Processor(EmbeddedLog(tmp_path), store, StateMachine(Registry(), Config()), act)
    proc.recover()  # (appends its leader announcement: entry 1)
    proc.log.append(b"\xff garbage", 1)  # no command has this code
    proc.log.append(encode_command(SchemaUpdate(remove_id="dp_x", waiter=5)), 2)
    await asyncio.wait_for(done.wait(), 5)
    assert [r.waiter for r in got if isinstance(r, a.Reply)] == [5]  # the next entry applied
    assert store.get("meta", APPLIED) == (3).to_bytes(8, "big")
    assert "skipping log entry 2" in caplog.text
    await proc.log.close()


async def test_recovery_restarts_running_invocations_from_the_index(tmp_path: Path) -> None:
    """Tables written before the "running" index get it built once; later restarts read only
    the index, never the (many) completed statuses, which used to cost seconds each."""
    store = MemoryStore()
    running = Status(id=b"r" * 16, phase=Phase.INVOKED)
    done = [Status(id=bytes([i]) * 16, phase=Phase.COMPLETED) for i in range(100)]
    store.write({("status", st.id): st.encode() for st in [running, *done]})
    restarted: list[p.Message] = []

    async def recover() -> None:
        proc = Processor(EmbeddedLog(tmp_path), store, StateMachine(Registry(), Config()), print)
        proc.propose = restarted.append  # type: ignore[method-assign]
        proc.recover()
        await proc.log.close()

    await recover()
    assert restarted == [Manage(id=running.id, action=Terminate.RESTART)]
    assert store.get("meta", RUNNING_INDEXED) is not None
    assert [k for k, _ in store.scan("running", b"")] == [running.id]

    # Completed statuses that cannot even be decoded: a restart must not read them.
    store.write({("status", st.id): b"\xff" for st in done})
    restarted.clear()
    await recover()
    assert restarted == [Manage(id=running.id, action=Terminate.RESTART)]


class _FailingDB:
    """RocksDB whose next ``failures`` writes raise, as rocksdict does on a full disk."""

    def __init__(self, db: Any, failures: int) -> None:
        self._db = db
        self.failures = failures

    def write(self, *args: Any) -> None:
        if self.failures > 0:
            self.failures -= 1
            raise Exception("IO error: No space left on device: While appending to file")
        self._db.write(*args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._db, name)


def _ingest(*offsets: int, waiter: int = 0, dlq: str = "dead") -> KafkaIngest:
    return KafkaIngest(
        subscription="s",
        producer=b"p" * 20,
        topic="in",
        partition=0,
        service="Counter",
        handler="add",
        kind=Kind.SERVICE,
        dead_letter_topic=dlq,
        records=[KafkaRecord(offset=o, key=f"k{o}", input=b"%d" % o) for o in offsets],
        waiter=waiter,
    )


async def test_a_storage_error_is_fatal_not_a_skipped_command(tmp_path: Path) -> None:
    """A write error fails every command of the batch alike: skipping them would lose the
    Kafka records in it (a transient one, gone by the time the skip is written, did). It
    stops the processor instead (the log keeps the batch), and the applied position stays
    where the tables are."""
    store = RocksDBStore(tmp_path / "db")
    failed: list[Fatal] = []
    got: list[a.Action] = []
    proc = Processor(
        EmbeddedLog(tmp_path / "log"),
        store,
        StateMachine(Registry(), Config()),
        got.extend,
        on_failed=failed.append,
    )
    proc.recover()
    real = store._db
    store._db = _FailingDB(real, failures=2)
    proc.log.append(encode_command(_ingest(0, 1, 2, waiter=7)), 1)
    async with asyncio.timeout(5):
        while not failed:  # noqa: ASYNC110 - on_failed is a plain callback
            await asyncio.sleep(0.01)
    assert isinstance(failed[0], StorageError), failed
    assert got == []  # no reply: the consumer commits nothing
    assert proc.applied == 0 and store.get("meta", APPLIED) is None
    assert list(store.scan("kafka_dlq", b"")) == [] and store.get("kafka_dedup", b"p" * 20) is None
    with pytest.raises(LogError):
        proc.log.append(b"more", 2)  # the log takes nothing after a failure
    await proc.log.close()

    # The next process (the disk works again) applies the batch from the log.
    store._db = real
    proc = Processor(
        EmbeddedLog(tmp_path / "log"), store, StateMachine(Registry(), Config()), print
    )
    proc.recover()
    assert proc.applied == 2  # the first process's leader announcement, then the batch
    assert store.get("kafka_dedup", b"p" * 20) == (2).to_bytes(8, "big")
    await proc.log.close()
    store.close()


async def test_an_unappliable_kafka_batch_dead_letters_its_records_and_replies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A KafkaIngest the state machine cannot apply (a bug) is skipped, but each of its
    records above the dedup position still ends as a dead letter with the reason, the
    position moves past them, and the consumer gets its reply so that its offsets move."""
    from sluice.broker.partition.lifecycle import kafka

    def broken(ctx: object, cmd: object) -> None:
        raise ZeroDivisionError("a bug in applying it")

    monkeypatch.setattr(kafka, "ingest", broken)
    store = MemoryStore()
    store.write({("kafka_dedup", b"p" * 20): (0).to_bytes(8, "big")})  # offset 0 is in
    got: list[a.Action] = []
    done = asyncio.Event()

    def act(actions: list[a.Action]) -> None:
        got.extend(actions)
        done.set()

    proc = Processor(EmbeddedLog(tmp_path), store, StateMachine(Registry(), Config()), act)
    proc.recover()
    proc.log.append(encode_command(_ingest(0, 1, 2, waiter=7)), 1)
    await asyncio.wait_for(done.wait(), 5)
    assert [(r.waiter, r.kind) for r in got if isinstance(r, a.Reply)] == [(7, "ok")]
    rows = [DeadLetter.decode(v) for _, v in store.scan("kafka_dlq", b"")]
    assert sorted(r.value for r in rows) == [b"1", b"2"]  # offset 0 was already ingested
    for r in rows:
        headers = {h.key: h.value for h in r.headers}
        assert "ZeroDivisionError" in headers["sluice-dlq-reason"]
        assert r.key == f"k{headers['sluice-dlq-offset']}".encode()
    assert store.get("kafka_dedup", b"p" * 20) == (2).to_bytes(8, "big")
    assert proc.applied == 2  # (entry 1: the leader announcement)
    await proc.log.close()


async def test_an_unappliable_request_gets_an_error_reply(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sluice.broker.partition import state_machine

    monkeypatch.setattr(
        state_machine.StateMachine, "apply", lambda self, ctx, cmd: 1 / 0, raising=True
    )
    got: list[a.Action] = []
    done = asyncio.Event()

    def act(actions: list[a.Action]) -> None:
        got.extend(actions)
        done.set()

    proc = Processor(EmbeddedLog(tmp_path), MemoryStore(), StateMachine(Registry(), Config()), act)
    proc.recover()
    proc.log.append(encode_command(SchemaUpdate(remove_id="dp_x", waiter=9)), 1)
    await asyncio.wait_for(done.wait(), 5)
    [reply] = got
    assert isinstance(reply, a.Reply) and (reply.waiter, reply.code) == (9, 500)
    assert "could not be applied" in reply.message
    await proc.log.close()


async def test_replay_refuses_a_log_with_a_hole(tmp_path: Path) -> None:
    """A segment missing in the middle: the LSNs jump, and replaying past the hole would
    rebuild tables without its entries."""
    log = EmbeddedLog(tmp_path, segment_bytes=4096)
    n = 0
    done = asyncio.Event()

    def durable(recs: list[Record]) -> None:
        nonlocal n
        n += len(recs)
        if n == 30:
            done.set()

    log.open(durable)
    for i in range(30):
        log.append(encode_command(SchemaUpdate(remove_id=f"dp_{i}" + "x" * 400)), i)
        await asyncio.sleep(0)
        while log._flushing:  # noqa: ASYNC110 - one batch per record: segments roll
            await asyncio.sleep(0.001)
    await asyncio.wait_for(done.wait(), 5)
    await log.close()
    segments = sorted(tmp_path.glob("*.seg"))  # noqa: ASYNC240
    assert len(segments) >= 3
    segments[1].unlink()
    proc = Processor(
        EmbeddedLog(tmp_path), MemoryStore(), StateMachine(Registry(), Config()), print
    )
    with pytest.raises(LogCorrupted, match="the log skips from LSN"):
        proc.recover()
