"""A graceful restart on the same data directory: deployments, state, timers and results stay."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.conftest import running_broker

from .conftest import Client, ServiceProcess


async def test_restart_keeps_everything(tmp_path: Path, restate_service: ServiceProcess) -> None:
    async with running_broker(tmp_path / "d") as b, Client(b) as c:
        await c.register(restate_service.uri)
        assert (await c.call("/Counter/r/add", 7)).json() == 7
        sleeper = await c.call("/Greeter/sleepy/send", 1500)
        sleeper_id = sleeper.json()["invocationId"]

    async with running_broker(tmp_path / "d") as b2, Client(b2) as c2:
        assert (await c2.call("/Counter/r/add", 1)).json() == 8  # deployment and state survived
        out = await c2.ingress.get(f"/restate/invocation/{sleeper_id}/attach")
        assert out.status_code == 200 and out.json() == "rested"  # the durable timer fired
        assert b2.processor.applied > 0
    await asyncio.sleep(0)


async def test_checkpoint_trims_the_log_and_restart_replays_the_rest(
    tmp_path: Path, restate_service: ServiceProcess
) -> None:
    data = tmp_path / "d"
    async with running_broker(data, log_segment_bytes=4096) as b, Client(b) as c:
        await c.register(restate_service.uri)
        for _ in range(60):
            await c.call("/Counter/t/add", 1)
        segments = lambda: sorted((data / "log").glob("*.seg"))  # noqa: E731
        before = len(segments())
        assert before > 3
        assert await b.checkpoint() > 0
        assert len(segments()) < before
        for _ in range(5):  # these stay in the log, past the checkpoint
            await c.call("/Counter/t/add", 1)

    async with running_broker(data, log_segment_bytes=4096) as b2, Client(b2) as c2:
        assert (await c2.call("/Counter/t/add", 1)).json() == 66
