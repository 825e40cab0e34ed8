"""A counter virtual object: state per key, exclusive handlers one at a time, shared reads."""

from __future__ import annotations

import asyncio

import httpx

from .support import call_json


async def test_counter_adds_and_reads(ingress: httpx.AsyncClient, key: str) -> None:
    assert await call_json(ingress, f"/Counter/{key}/add", 5) == 5
    assert await call_json(ingress, f"/Counter/{key}/add", 2) == 7
    assert await call_json(ingress, f"/Counter/{key}/get") == 7
    # State is per key.
    assert await call_json(ingress, f"/Counter/{key}-other/get") == 0


async def test_exclusive_handlers_of_one_key_never_overlap(
    ingress: httpx.AsyncClient, key: str
) -> None:
    # add_slowly reads, sleeps durably, then writes: overlapping runs would lose updates.
    results = await asyncio.gather(
        *(call_json(ingress, f"/Counter/{key}/add_slowly", 1) for _ in range(6))
    )
    assert sorted(results) == [1, 2, 3, 4, 5, 6]
    assert await call_json(ingress, f"/Counter/{key}/get") == 6


async def test_state_keys_and_clear_all(ingress: httpx.AsyncClient, key: str) -> None:
    assert await call_json(ingress, f"/Counter/{key}/keys") == []
    await call_json(ingress, f"/Counter/{key}/add", 3)
    assert await call_json(ingress, f"/Counter/{key}/keys") == ["count"]
    await call_json(ingress, f"/Counter/{key}/reset")
    assert await call_json(ingress, f"/Counter/{key}/keys") == []
    assert await call_json(ingress, f"/Counter/{key}/get") == 0
