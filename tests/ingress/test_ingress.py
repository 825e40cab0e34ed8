"""Ingress errors and limits: nothing bad is appended; every rejection is a JSON 4xx."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from broker.config import BrokerSettings
from broker.server import Broker
from ingress.http import parse_delay
from tests.broker.conftest import Client, ServiceProcess


@pytest.fixture
async def small_broker(tmp_path: Path) -> AsyncIterator[Broker]:
    b = Broker(
        BrokerSettings(data_dir=tmp_path / "d", ingress_port=0, admin_port=0, body_limit=64 * 1024)
    )
    await b.start()
    yield b
    await b.stop()


async def raw(port: int, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    out = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    return out


async def test_413_before_anything_is_appended(
    small_broker: Broker, restate_service: ServiceProcess
) -> None:
    c = Client(small_broker)
    try:
        await c.register(restate_service.uri)
        tail = small_broker.log.tail
        big = b'"' + b"x" * (70 * 1024) + b'"'
        r = await c.ingress.post("/Greeter/greet", content=big)
        assert r.status_code == 413 and "limit" in r.json()["message"]
        # Chunked: the limit holds while reading, without a content-length to trust.
        head = b"POST /Greeter/greet HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n"
        chunks = (
            b"".join(b"%x\r\n" % 8192 + b"y" * 8192 + b"\r\n" for _ in range(10)) + b"0\r\n\r\n"
        )
        out = await raw(small_broker.ingress_port, head + chunks)
        assert out.startswith(b"HTTP/1.1 413")
        assert small_broker.log.tail == tail, "a rejected request reached the log"
        # A chunked body under the limit is fine.
        ok = b'"chunky"'
        out = await raw(
            small_broker.ingress_port,
            head.replace(b"\r\n\r\n", b"\r\nconnection: close\r\n\r\n")
            + b"%x\r\n" % len(ok)
            + ok
            + b"\r\n0\r\n\r\n",
        )
        assert out.startswith(b"HTTP/1.1 200") and out.endswith(b'"Hello chunky!"')
    finally:
        await c.close()


async def test_unknown_targets_and_bad_input(
    client: Client, restate_service: ServiceProcess
) -> None:
    await client.register(restate_service.uri)
    cases = [
        ("/Nope/greet", b'"a"', 404, "service 'Nope' not found"),
        ("/Greeter/nope", b'"a"', 404, "handler 'nope' was not found"),
        ("/Counter/add", b"1", 400, "call /Counter/{key}/{handler}"),
        ("/Greeter/adult", b"{not json", 400, "not valid JSON"),
        ("/Greeter/adult", b'{"name": "a"}', 400, "missing required field 'age'"),
        ("/Greeter/adult", b'{"name": "a", "age": "old"}', 400, "expected integer"),
        ("/Greeter/greet?delay=5s", b'"a"', 400, "only with sends"),
        ("/Greeter/greet/send?delay=soon", b'"a"', 400, "bad delay"),
    ]
    tail = client_broker_tail = None  # noqa: F841
    for path, body, status, text in cases:
        r = await client.ingress.post(
            path, content=body, headers={"content-type": "application/json"}
        )
        assert r.status_code == status, (path, r.text)
        assert text in r.json()["message"], (path, r.json())
    r = await client.ingress.post("/Greeter/adult", content=b'{"name": "a", "age": 30}')
    assert r.status_code == 200 and r.json() is True
    r = await client.ingress.get("/restate/invocation/inv_1bogus/attach")
    assert r.status_code == 400
    r = await client.ingress.get("/restate/invocation/inv_1" + "A" * 32 + "/output")
    assert r.status_code == 404
    r = await client.ingress.post("/restate/awakeables/prom_1xyz/resolve", content=b"1")
    assert r.status_code == 400
    assert (await client.ingress.get("/restate/health")).status_code == 200


async def test_send_with_delay(client: Client, restate_service: ServiceProcess) -> None:
    await client.register(restate_service.uri)
    r = await client.ingress.post("/Counter/d/add/send?delay=300ms", content=b"3")
    assert r.status_code == 202
    await asyncio.sleep(0.1)
    assert (await client.ingress.post("/Counter/d/get")).json() == 0
    await asyncio.sleep(0.6)
    assert (await client.ingress.post("/Counter/d/get")).json() == 3


def test_parse_delay() -> None:
    assert parse_delay("10s") == 10_000
    assert parse_delay("1m 30s") == 90_000
    assert parse_delay("250ms") == 250
    assert parse_delay("PT1M5S") == 65_000
    assert parse_delay("P1DT1H") == 90_000_000
    with pytest.raises(ValueError):
        parse_delay("later")


async def test_503_with_retry_after_over_the_admission_limit(
    tmp_path: Path, restate_service: ServiceProcess
) -> None:
    b = Broker(
        BrokerSettings(data_dir=tmp_path / "d", ingress_port=0, admin_port=0, admission_limit=1)
    )
    await b.start()
    c = Client(b)
    try:
        await c.register(restate_service.uri)
        first = asyncio.ensure_future(c.call("/Greeter/sleepy", 1000))
        async with asyncio.timeout(10):
            while b.overload() is None:  # noqa: ASYNC110 (the broker has no event for it)
                await asyncio.sleep(0.01)
        tail = b.log.tail
        r = await c.call("/Greeter/greet", "Ada")
        assert r.status_code == 503, r.text
        assert r.headers["retry-after"] == "1"
        assert "overloaded" in r.json()["message"]
        assert b.log.tail == tail, "a refused request reached the log"
        assert (await first).status_code == 200
        r = await c.call("/Greeter/greet", "Ada")
        assert r.status_code == 200, r.text
    finally:
        await c.close()
        await b.stop()
