"""The processor: durable batch in, one write batch with the applied position, actions out."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from broker.log import EmbeddedLog
from broker.partition import actions as a
from broker.partition._context import Config
from broker.partition._records import SchemaUpdate, encode_command
from broker.partition.processor import APPLIED, Processor
from broker.partition.state_machine import StateMachine
from broker.schema import Registry
from broker.storage import MemoryStore


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
