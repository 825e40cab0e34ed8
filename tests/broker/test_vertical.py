"""The vertical slice: register a restate-sdk deployment, call a service, call an object."""

from __future__ import annotations

import asyncio

import pytest

from .conftest import Client, ServiceProcess


@pytest.mark.parametrize("http1", [False, True], ids=["h2c", "http1.1"])
async def test_greeter_and_counter(
    client: Client, restate_service: ServiceProcess, http1: bool
) -> None:
    out = await client.register(restate_service.uri, http1=http1)
    assert str(out["id"]).startswith("dp_")
    names = {s["name"] for s in out["services"]}  # type: ignore[attr-defined]
    assert {"Greeter", "Counter", "SignUp"} <= names

    r = await client.call("/Greeter/greet", "Ada")
    assert r.status_code == 200, r.text
    assert r.json() == "Hello Ada!"
    assert r.headers["x-restate-id"].startswith("inv_1")

    results = await asyncio.gather(*(client.call("/Counter/c1/add", 1) for _ in range(20)))
    assert all(r.status_code == 200 for r in results), [r.text for r in results]
    assert sorted(r.json() for r in results) == list(range(1, 21))
    r = await client.call("/Counter/c1/get")
    assert r.json() == 20
