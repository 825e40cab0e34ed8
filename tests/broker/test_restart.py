"""A graceful restart on the same data directory: deployments, state, timers and results stay."""

from __future__ import annotations

import asyncio
from pathlib import Path

from broker.config import BrokerSettings
from broker.server import Broker

from .conftest import Client, ServiceProcess


async def test_restart_keeps_everything(tmp_path: Path, restate_service: ServiceProcess) -> None:
    settings = BrokerSettings(data_dir=tmp_path / "d", ingress_port=0, admin_port=0)
    b = Broker(settings)
    await b.start()
    c = Client(b)
    await c.register(restate_service.uri)
    assert (await c.call("/Counter/r/add", 7)).json() == 7
    sleeper = await c.call("/Greeter/sleepy/send", 1500)
    sleeper_id = sleeper.json()["invocationId"]
    await c.close()
    await b.stop()

    b2 = Broker(settings)
    await b2.start()
    c2 = Client(b2)
    try:
        assert (await c2.call("/Counter/r/add", 1)).json() == 8  # deployment and state survived
        out = await c2.ingress.get(f"/restate/invocation/{sleeper_id}/attach")
        assert out.status_code == 200 and out.json() == "rested"  # the durable timer fired
        assert b2.processor.applied > 0
    finally:
        await c2.close()
        await b2.stop()
    await asyncio.sleep(0)


async def test_checkpoint_trims_the_log_and_restart_replays_the_rest(
    tmp_path: Path, restate_service: ServiceProcess
) -> None:
    settings = BrokerSettings(
        data_dir=tmp_path / "d", ingress_port=0, admin_port=0, log_segment_bytes=4096
    )
    b = Broker(settings)
    await b.start()
    c = Client(b)
    await c.register(restate_service.uri)
    for _ in range(60):
        await c.call("/Counter/t/add", 1)
    segments = lambda: sorted((tmp_path / "d" / "log").glob("*.seg"))  # noqa: E731
    before = len(segments())
    assert before > 3
    assert await b.checkpoint() > 0
    assert len(segments()) < before
    for _ in range(5):  # these stay in the log, past the checkpoint
        await c.call("/Counter/t/add", 1)
    await c.close()
    await b.stop()

    b2 = Broker(settings)
    await b2.start()
    c2 = Client(b2)
    try:
        assert (await c2.call("/Counter/t/add", 1)).json() == 66
    finally:
        await c2.close()
        await b2.stop()
