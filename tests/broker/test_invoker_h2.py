"""The h2 invoker under load: thousands of streams over hypercorn without a retried attempt.

hypercorn closes a connection after 1,000 requests (GOAWAY); a stream opened in that race
kills the whole connection, so the invoker retires connections first. Streams must also be
closed on both sides once the handler has said its last word, or they pile up until the
endpoint's concurrent-stream cap.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sluice.broker.server import Broker
from tests.conftest import running_broker
from tests.scenarios.support import eventually

from .conftest import Client, ServiceProcess


async def test_many_calls_no_retries(
    broker: Broker, client: Client, restate_service: ServiceProcess
) -> None:
    await client.register(restate_service.uri)
    sem = asyncio.Semaphore(16)  # one connection: past hypercorn's 1,000 requests

    async def one(i: int) -> int:
        async with sem:
            r = await client.call("/Greeter/greet", f"n{i}")
            return r.status_code

    codes = await asyncio.gather(*(one(i) for i in range(1200)))
    assert set(codes) == {200}
    q = await client.admin.post(
        "/query",
        json={
            "query": "SELECT id, retry_count, last_failure FROM sys_invocation "
            "WHERE target_handler_name = 'greet'"
        },
    )
    rows = q.json()["rows"]
    assert len(rows) == 1200
    retried = [r for r in rows if r["retry_count"] or r["last_failure"]]
    assert not retried, retried[:3]

    async def open_streams() -> int:
        return sum(len(c.streams) for h2 in broker.invoker._h2.values() for c in h2._conns)

    # A call's answer leaves once its End is in the log, while the endpoint ends its response
    # only after it has read the broker's END_STREAM: the last few streams may still be
    # closing (a CPU-starved endpoint took over 60 ms). A leaked stream never closes.
    await eventually(
        open_streams, until=lambda n: n == 0, within=10.0, what="every h2 stream to close"
    )


@pytest.fixture
async def narrow(tmp_path: Path) -> AsyncIterator[Broker]:
    async with running_broker(
        tmp_path / "d", max_concurrent_invocations=2, inactivity_timeout_s=0.5, abort_timeout_s=5
    ) as b:
        yield b


async def test_concurrency_limit_queues_attempts(
    narrow: Broker, restate_service: ServiceProcess
) -> None:
    c = Client(narrow)
    try:
        await c.register(restate_service.uri)
        peak = 0

        async def watch() -> None:
            nonlocal peak
            while True:
                peak = max(peak, len(narrow.invoker._active))
                await asyncio.sleep(0.001)

        watcher = asyncio.ensure_future(watch())
        # Sleeping handlers hold their slot until the inactivity timeout makes them suspend.
        calls = [c.call("/Greeter/sleepy", 300) for _ in range(4)]
        calls += [c.call("/Greeter/greet", f"g{i}") for i in range(20)]
        results = await asyncio.gather(*calls)
        watcher.cancel()
        assert all(r.status_code == 200 for r in results), [r.text for r in results]
        assert peak <= 2, peak
    finally:
        await c.close()
