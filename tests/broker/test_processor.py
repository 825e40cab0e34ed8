"""The processor: durable batch in, one write batch with the applied position, actions out."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from broker.log import EmbeddedLog
from broker.partition import actions as a
from broker.partition._context import Config
from broker.partition._records import (
    Manage,
    Phase,
    SchemaUpdate,
    Status,
    Terminate,
    encode_command,
)
from broker.partition.processor import APPLIED, RUNNING_INDEXED, Processor
from broker.partition.state_machine import StateMachine
from broker.schema import Registry
from broker.storage import MemoryStore
from sdk import protocol as p


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
    proc.recover()
    proc.log.append(b"\xff garbage", 1)  # no command has this code
    proc.log.append(encode_command(SchemaUpdate(remove_id="dp_x", waiter=5)), 2)
    await asyncio.wait_for(done.wait(), 5)
    assert [r.waiter for r in got if isinstance(r, a.Reply)] == [5]  # the next entry applied
    assert store.get("meta", APPLIED) == (2).to_bytes(8, "big")
    assert "skipping log entry 1" in caplog.text
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
        proc.submit = restarted.append  # type: ignore[method-assign]
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
