"""Session fixtures shared by the test packages."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from sluice.broker.config import BrokerSettings
from sluice.broker.server import Broker
from sluice.connectors.serde import FileSchemaRegistry, HttpSchemaRegistry, SchemaRegistry
from tests import quiet
from tests.broker.conftest import ServiceProcess
from tests.connectors.registry_server import RegistryServer
from tests.kafka import Tansu, tansu_session
from tests.s3 import S3Server, s3_session


@pytest.fixture(scope="session")
def kafka() -> Iterator[Tansu]:
    """The test Kafka broker (Tansu, memory storage), started once per session on demand."""
    yield from tansu_session()


@pytest.fixture(scope="session")
def s3() -> Iterator[S3Server]:
    """A local S3-protocol server (moto_server), started once per session on demand."""
    yield from s3_session()


@dataclass(frozen=True)
class ServerLog:
    """Which log a test's brokers run on: ``flags(name)`` are the ``sluice server`` flags of
    one broker's log (the same name: the same log, for a restart; another name: another);
    ``physical``: on the Kafka log, a processor per partition (``--physical-partitions``)."""

    kafka: Tansu | None
    physical: bool = False
    run: str = field(default_factory=lambda: uuid.uuid4().hex[:8])

    def flags(self, name: str = "broker") -> tuple[str, ...]:
        if self.kafka is None:
            return ()
        log = ("--log", f"kafka://{self.kafka.bootstrap}/log-{self.run}-{name}")
        return (*log, "--physical-partitions", "--partitions", "4") if self.physical else log


def _server_log(request: pytest.FixtureRequest) -> ServerLog:
    if request.param == "embedded":
        return ServerLog(None)
    return ServerLog(request.getfixturevalue("kafka"), physical=request.param == "partitioned")


@pytest.fixture(params=["embedded", "kafka-log"])
def server_log(request: pytest.FixtureRequest) -> ServerLog:
    """Parametrized: a test that takes it runs on the embedded log and on the Kafka log (topics
    of its own on the session's Tansu)."""
    return _server_log(request)


@pytest.fixture(params=["embedded", "kafka-log", "partitioned"])
def kafka_server_log(request: pytest.FixtureRequest) -> ServerLog:
    """``server_log``, and the Kafka log on physical partitions as well (each ingests some
    source partitions, owns some keys, and has an outbox and egress of its own)."""
    return _server_log(request)


@contextlib.asynccontextmanager
async def running_broker(data_dir: Path, **settings: Any) -> AsyncIterator[Broker]:
    """A Sluice broker in the running event loop, on free ports, stopped on the way out."""
    b = Broker(BrokerSettings(data_dir=data_dir, ingress_port=0, admin_port=0, **settings))
    await b.start()
    quiet.LIVE.add(b.admin_port)
    try:
        yield b
    finally:
        quiet.LIVE.discard(b.admin_port)
        await b.stop()


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[Broker]:
    """A Sluice broker in this test's event loop, on free ports, with short timeouts."""
    async with running_broker(tmp_path / "data", inactivity_timeout_s=5, abort_timeout_s=5) as b:
        yield b


@pytest.fixture(scope="session")
def egress_services() -> Iterator[ServiceProcess]:
    """The Sluice SDK handlers of the Kafka pipeline tests (tests/egress/services.py)."""
    with ServiceProcess("tests.egress.services") as svc:
        yield svc


@pytest.fixture(params=["file", "http"])
def avro_registry(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[str, SchemaRegistry]]:
    """A schema registry for Avro tests, a file or a small local server: (the address the
    broker is given, a client of the same registry for the test)."""
    if request.param == "file":
        path = tmp_path / "registry.json"
        yield str(path), FileSchemaRegistry(path)
    else:
        with RegistryServer() as server:
            yield server.url, HttpSchemaRegistry(server.url)
