"""Session fixtures shared by the test packages."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from broker.config import BrokerSettings
from broker.server import Broker
from tests.kafka import Tansu, tansu_session


@pytest.fixture(scope="session")
def kafka() -> Iterator[Tansu]:
    """The test Kafka broker (Tansu, memory storage), started once per session on demand."""
    yield from tansu_session()


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[Broker]:
    """A Sluice broker in this test's event loop, on free ports, with short timeouts."""
    b = Broker(
        BrokerSettings(
            data_dir=tmp_path / "data",
            ingress_port=0,
            admin_port=0,
            inactivity_timeout_s=5,
            abort_timeout_s=5,
        )
    )
    await b.start()
    yield b
    await b.stop()
