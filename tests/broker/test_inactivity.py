"""Inactivity timeout: an idle bidi stream is asked to suspend, and resumes on its timer."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sluice.broker.server import Broker
from tests.conftest import running_broker

from .conftest import Client, ServiceProcess


@pytest.fixture
async def impatient(tmp_path: Path) -> AsyncIterator[Broker]:
    async with running_broker(tmp_path / "d", inactivity_timeout_s=0.3, abort_timeout_s=5) as b:
        yield b


async def test_idle_stream_suspends_then_resumes(
    impatient: Broker, restate_service: ServiceProcess
) -> None:
    c = Client(impatient)
    try:
        await c.register(restate_service.uri)
        call = asyncio.ensure_future(c.call("/Greeter/sleepy", 2500))
        # Looked at until it is seen suspended or the call is answered: a fixed number of
        # looks could all come before the invocation even started, on a busy machine.
        seen: set[str] = set()
        deadline = time.monotonic() + 30
        while "suspended" not in seen and not call.done():
            assert time.monotonic() < deadline, f"neither suspended nor answered: {seen}"
            q = await c.admin.post(
                "/query",
                json={
                    "query": "SELECT status FROM sys_invocation "
                    "WHERE target_handler_name = 'sleepy'"
                },
            )
            seen.update(r["status"] for r in q.json()["rows"])
            await asyncio.sleep(0.05)
        assert "suspended" in seen, seen
        r = await call
        assert r.status_code == 200 and r.json() == "rested"
    finally:
        await c.close()
