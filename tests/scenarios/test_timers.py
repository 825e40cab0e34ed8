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
    assert await call_json(ingress, "/Sleeper/sleep_many", {"count": 6, "ms": 600}) == 6
    elapsed = time.monotonic() - started
    # One after the other they would take 3.6 s; the margin is for a loaded machine.
    assert 0.6 <= elapsed < 3.0, f"6 parallel sleeps of 0.6 s took {elapsed:.2f} s"


async def test_sleeping_invocations_run_concurrently(ingress: httpx.AsyncClient) -> None:
    started = time.monotonic()
    results = await asyncio.gather(*(call_json(ingress, "/Sleeper/sleep", 500) for _ in range(8)))
    elapsed = time.monotonic() - started
    assert results == [500] * 8
    # One after the other they would take 4 s; the margin is for a loaded machine.
    assert 0.5 <= elapsed < 3.5, f"8 concurrent sleeps of 0.5 s took {elapsed:.2f} s"
