"""Calls and delayed sends across three services: ChainA -> ChainB -> ChainC (an object)."""

from __future__ import annotations

import time

import httpx

from .support import call_json, eventually


async def test_call_chain_across_three_services(ingress: httpx.AsyncClient, key: str) -> None:
    # Each hop tags the value, so the result proves every service ran, in order.
    result = await call_json(ingress, "/ChainA/call", {"key": key, "value": "x"})
    assert result == ["x|A|B|C"]
    assert await call_json(ingress, f"/ChainC/{key}/get") == ["x|A|B|C"]


async def test_delayed_send_chain_arrives_after_the_delay(
    ingress: httpx.AsyncClient, key: str
) -> None:
    started = time.monotonic()
    callee = await call_json(
        ingress, "/ChainA/send_later", {"key": key, "value": "y", "delay_ms": 800}
    )
    assert isinstance(callee, str) and callee.startswith("inv_"), callee
    # ChainA returned at once; nothing has reached ChainC yet, when looked at before the send
    # could be due (a busy machine may only get to look later: then arriving is no fault).
    early = await call_json(ingress, f"/ChainC/{key}/get")
    if time.monotonic() - started < 0.8:
        assert early == [], early
    values = await eventually(
        lambda: call_json(ingress, f"/ChainC/{key}/get"), what="the delayed send to arrive"
    )
    assert values == ["y|A|B|C"]
    assert time.monotonic() - started >= 0.8
    # The delayed invocation itself completed.
    output = await ingress.get(f"/restate/invocation/{callee}/attach")
    assert output.status_code == 200, output.text


async def test_ingress_send_with_a_delay(ingress: httpx.AsyncClient, key: str) -> None:
    started = time.monotonic()
    response = await ingress.post(f"/Counter/{key}/add/send?delay=700ms", json=5)
    assert response.status_code == 202, response.text
    early = await call_json(ingress, f"/Counter/{key}/get")
    if time.monotonic() - started < 0.7:  # looked before the add could be due
        assert early == 0, early
    value = await eventually(
        lambda: call_json(ingress, f"/Counter/{key}/get"), what="the delayed add to run"
    )
    assert value == 5
    assert time.monotonic() - started >= 0.7
