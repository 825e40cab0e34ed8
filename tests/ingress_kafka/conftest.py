"""Fixtures: the Kafka counter service (restate-sdk and Sluice SDK), an in-process broker,
and helpers to produce records and read the counters."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from sluice.broker.server import Broker
from sluice.connectors.kafka import Producer
from tests.broker.conftest import ServiceProcess
from tests.kafka import Tansu
from tests.quiet import until_quiet


@pytest.fixture(scope="session")
def restate_counter() -> Iterator[ServiceProcess]:
    with ServiceProcess("tests.ingress_kafka.restate_counter") as svc:
        yield svc


@pytest.fixture(scope="session")
def sluice_counter() -> Iterator[ServiceProcess]:
    with ServiceProcess("tests.ingress_kafka.sluice_counter") as svc:
        yield svc


_topics = iter(range(1_000_000))


def new_topic(kafka: Tansu, partitions: int = 4) -> str:
    name = f"t{os.getpid()}-{next(_topics)}-{time.monotonic_ns() % 100000}"
    kafka.create_topic(name, partitions)
    return name


def produce(
    kafka: Tansu, topic: str, records: list[tuple[Any, Any, int | None]], **conf: Any
) -> None:
    """(key, value, partition) triples; str/dict values become JSON, bytes stay as they are."""
    p = Producer({"bootstrap.servers": kafka.bootstrap, **conf})
    for key, value, part in records:
        k = key.encode() if isinstance(key, str) else key
        v = value if isinstance(value, bytes) or value is None else json.dumps(value).encode()
        p.produce(topic, v, key=k, partition=part)
    p.flush()


async def deploy_with_kafka(
    c: httpx.AsyncClient, admin: str, service_uri: str, kafka: Tansu, *, http1: bool = False
) -> None:
    """What a subscription needs first, on the broker whose admin API is at the URL ``admin``:
    the handler service at ``service_uri`` registered, and ``kafka`` declared as cluster
    ``local``."""
    r = await c.post(f"{admin}/deployments", json={"uri": service_uri, "use_http_11": http1})
    assert r.status_code == 201, r.text
    r = await c.post(
        f"{admin}/kafka-clusters",
        json={"name": "local", "properties": {"bootstrap.servers": kafka.bootstrap}},
    )
    assert r.status_code == 201, r.text


class Admin:
    def __init__(self, port: int) -> None:
        self.port = port
        self.http = httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30)

    async def register(self, uri: str, *, http1: bool = False) -> None:
        r = await self.http.post(
            "/deployments", json={"uri": uri, "force": True, "use_http_11": http1}
        )
        assert r.status_code == 201, r.text

    async def cluster(self, kafka: Tansu, name: str = "local", **fields: Any) -> None:
        """Declare ``kafka`` as cluster ``name``; ``fields``: more of the cluster's settings
        (e.g. ``schema_registry``)."""
        r = await self.http.post(
            "/kafka-clusters",
            json={"name": name, "properties": {"bootstrap.servers": kafka.bootstrap}, **fields},
        )
        assert r.status_code in (201, 409), r.text

    async def subscribe(self, topic: str, sink: str, **options: Any) -> dict[str, Any]:
        body = {
            "source": f"kafka://local/{topic}",
            "sink": sink,
            "options": {k: str(v) for k, v in options.items()},
        }
        r = await self.http.post("/subscriptions", json=body)
        assert r.status_code == 201, r.text
        return r.json()  # type: ignore[no-any-return]

    async def state(self, service: str, key: str) -> dict[str, Any]:
        r = await self.http.get(f"/state/{service}/{quote(key, safe='')}")
        assert r.status_code == 200, r.text
        return r.json()["state"]  # type: ignore[no-any-return]

    async def wait_counts(
        self, keys: list[str], want: dict[str, int], within: float = 60
    ) -> dict[str, dict[str, Any]]:
        """Each key's state, once every count reached ``want`` and then the broker became
        quiet (tests/quiet.py), so that a record counted twice, late, shows; as they are when
        ``within`` seconds pass first."""
        deadline = time.monotonic() + within
        states: dict[str, dict[str, Any]] = {}
        pending = set(keys)
        while pending and time.monotonic() < deadline:
            for k in list(pending):
                try:
                    states[k] = await self.state("KafkaCounter", k)
                except (httpx.HTTPError, AssertionError):
                    continue
                if states[k].get("count", 0) >= want[k]:
                    pending.discard(k)
            if pending:
                await asyncio.sleep(0.2)
        if not pending:
            await until_quiet([self.port], within=max(deadline - time.monotonic(), 30.0))
            states = {k: await self.state("KafkaCounter", k) for k in keys}
        return states

    async def close(self) -> None:
        await self.http.aclose()


@pytest.fixture
async def admin(broker: Broker) -> AsyncIterator[Admin]:
    a = Admin(broker.admin_port)
    yield a
    await a.close()
