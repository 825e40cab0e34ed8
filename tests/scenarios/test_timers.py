"""Durable sleeps: they take their time, and concurrent ones overlap."""

from __future__ import annotations

import asyncio
import time

import httpx

from .support import call_json


async def test_sleep_lasts_its_duration(ingress: httpx.AsyncClient) -> None:
    started = time.monotonic()
    assert await call_json(ingress, "/Sleeper/sleep", 400) == 400
    assert time.monotonic() - started >= 0.4


async def test_sleeps_awaited_together_overlap(ingress: httpx.AsyncClient) -> None:
    started = time.monotonic()
    assert await call_json(ingress, "/Sleeper/sleep_many", {"count": 6, "ms": 1000}) == 6
    elapsed = time.monotonic() - started
    # One after the other they cannot take less than 6 s, however idle the machine; together
    # they take 1 s and whatever a busy machine adds, which is far less than the 5 s between.
    assert 1.0 <= elapsed < 6.0, f"6 sleeps of 1 s awaited together took {elapsed:.2f} s"


async def test_sleeping_invocations_run_concurrently(ingress: httpx.AsyncClient) -> None:
    started = time.monotonic()
    results = await asyncio.gather(*(call_json(ingress, "/Sleeper/sleep", 1000) for _ in range(8)))
    elapsed = time.monotonic() - started
    assert results == [1000] * 8
    # One after the other they cannot take less than 8 s; at once, 1 s and the machine's share.
    assert 1.0 <= elapsed < 8.0, f"8 concurrent sleeps of 1 s took {elapsed:.2f} s"
