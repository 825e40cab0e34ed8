"""Ingress errors and limits: nothing bad is appended; every rejection is a JSON 4xx."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sluice.broker.config import BrokerSettings
from sluice.broker.server import Broker
from sluice.ingress.http import parse_delay
from tests.broker.conftest import Client, ServiceProcess, log_holds


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
        # Answered after the two refused ones, so appended after anything they appended.
        data = small_broker.settings.data_dir
        assert log_holds(data, b'"chunky"')
        assert not log_holds(data, b"x" * 1024), "the refused body reached the log"
        assert not log_holds(data, b"y" * 1024), "the refused chunked body reached the log"
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
    """The send runs once its delay is over, not before: judged by the broker's clock and
    state, not by sleeping a little less and a little more than the delay."""
    await client.register(restate_service.uri)
    sent_ms = int(time.time() * 1000)  # the delay counts from no earlier than this
    r = await client.call("/Counter/d/add/send?delay=300ms", 3)
    assert r.status_code == 202, r.text
    iid = r.json()["invocationId"]
    st = (await client.admin.get(f"/invocations/{iid}")).json()
    if time.time() * 1000 < sent_ms + 300:  # looked before it could be due
        assert st["status"] == "scheduled", st
    out = await client.ingress.get(f"/restate/invocation/{iid}/attach")
    assert out.status_code == 200, out.text
    st = (await client.admin.get(f"/invocations/{iid}")).json()
    assert st["status"] == "completed", st
    assert st["modified_at"] >= sent_ms + 300, f"ran {st['modified_at'] - sent_ms} ms after"
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
        # The first call holds the only place until it is killed (a sleep of a second could
        # end before a busy machine sent the next request).
        first = asyncio.ensure_future(c.call("/Greeter/wait_long"))
        async with asyncio.timeout(10):
            while b.overload() is None:  # noqa: ASYNC110 (the broker has no event for it)
                await asyncio.sleep(0.01)
        refused, accepted = f"refused-{os.urandom(4).hex()}", f"accepted-{os.urandom(4).hex()}"
        r = await c.call("/Greeter/greet", refused)
        assert r.status_code == 503, r.text
        assert r.headers["retry-after"] == "1"
        assert "overloaded" in r.json()["message"]
        listed = (await c.admin.get("/invocations", params={"service": "Greeter"})).json()
        [holder] = [j["id"] for j in listed["invocations"] if j["handler"] == "wait_long"]
        assert (await c.admin.patch(f"/invocations/{holder}/kill")).status_code == 202
        assert (await first).status_code == 409
        r = await c.call("/Greeter/greet", accepted)
        assert r.status_code == 200, r.text
        # The log holds the accepted request (appended after the refused one), not the
        # refused one. Not its length: the first call's sleep appends to it meanwhile.
        assert log_holds(b.settings.data_dir, accepted.encode())
        assert not log_holds(b.settings.data_dir, refused.encode()), "a refused request was logged"
    finally:
        await c.close()
        await b.stop()
