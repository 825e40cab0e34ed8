"""Idempotency keys: repeated requests with one key execute once and share one result."""

from __future__ import annotations

import asyncio

import httpx

from .support import Scenario, call_json, send


async def test_repeated_requests_execute_once(
    scenario: Scenario, ingress: httpx.AsyncClient, key: str
) -> None:
    headers = {"idempotency-key": f"charge-{key}"}
    body = {"key": key, "amount": 10}

    async def charge() -> httpx.Response:
        return await ingress.post("/Payments/charge", json=body, headers=headers)

    sequential = [await charge() for _ in range(3)]
    concurrent = await asyncio.gather(*(charge() for _ in range(3)))
    for response in [*sequential, *concurrent]:
        assert response.status_code == 200, response.text
        assert response.json() == "charged 10"
    assert len(scenario.effects("charge", key)) == 1


async def test_idempotent_counter_adds_once_per_key(ingress: httpx.AsyncClient, key: str) -> None:
    for _ in range(3):
        response = await ingress.post(
            f"/Counter/{key}/add", json=5, headers={"idempotency-key": "first"}
        )
        assert response.status_code == 200, response.text
        assert response.json() == 5
    response = await ingress.post(
        f"/Counter/{key}/add", json=5, headers={"idempotency-key": "second"}
    )
    assert response.json() == 10
    assert await call_json(ingress, f"/Counter/{key}/get") == 10


async def test_repeated_sends_share_one_invocation(
    scenario: Scenario, ingress: httpx.AsyncClient, key: str
) -> None:
    headers = {"idempotency-key": f"send-{key}"}
    body = {"key": key, "amount": 7}
    first = await send(ingress, "/Payments/charge", body, headers)
    second = await send(ingress, "/Payments/charge", body, headers)
    assert first == second
    result = await ingress.get(f"/restate/invocation/{first}/attach")
    assert result.status_code == 200, result.text
    assert result.json() == "charged 7"
    assert len(scenario.effects("charge", key)) == 1


async def test_calls_with_one_idempotency_key_execute_once(
    scenario: Scenario, ingress: httpx.AsyncClient, key: str
) -> None:
    result = await call_json(ingress, "/Payments/charge_twice", {"key": key, "amount": 3})
    assert result == ["charged 3", "charged 3"]
    assert len(scenario.effects("charge", key)) == 1
