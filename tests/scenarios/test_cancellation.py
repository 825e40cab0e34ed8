"""Cancel (graceful: the handler compensates) and kill (abrupt) through the admin API."""

from __future__ import annotations

import time

import httpx

from .support import (
    Scenario,
    attach,
    booking_trail,
    call_json,
    eventually,
    send,
    wait_for_payment_window,
)

HOUR_MS = 3_600_000


async def _book_and_wait_for_hotel(
    scenario: Scenario, ingress: httpx.AsyncClient, trip: str
) -> str:
    """Start a booking that sleeps for an hour after the hotel; return once it sleeps."""
    invocation = await send(ingress, "/Trips/book", {"trip": trip, "wait_ms": HOUR_MS})
    await wait_for_payment_window(scenario, trip)
    return invocation


async def _attempts_left(scenario: Scenario, trip: str) -> tuple[int, int]:
    """(attempts of Trips/book that reached the payment window, attempts that ended)."""
    return len(scenario.effects("paying", trip)), len(scenario.effects("left", trip))


async def test_cancel_a_sleeping_invocation_runs_its_compensations(
    scenario: Scenario, ingress: httpx.AsyncClient, key: str
) -> None:
    invocation = await _book_and_wait_for_hotel(scenario, ingress, key)
    started = time.monotonic()
    cancelled = await scenario.env.cancel_invocation(invocation)
    assert cancelled.status_code in (200, 202), cancelled.text

    result = await attach(ingress, invocation)
    assert result.status_code == 409, result.text
    assert time.monotonic() - started < 30, "the hour-long sleep was not interrupted"
    trail = booking_trail(scenario, key)
    assert trail == [
        ("booked", "flight"),
        ("booked", "hotel"),
        ("cancelled", "hotel"),
        ("cancelled", "flight"),
    ]


async def test_kill_ends_an_invocation_without_compensations(
    scenario: Scenario, ingress: httpx.AsyncClient, key: str
) -> None:
    invocation = await _book_and_wait_for_hotel(scenario, ingress, key)
    killed = await scenario.env.kill_invocation(invocation)
    assert killed.status_code in (200, 202), killed.text

    result = await attach(ingress, invocation)
    assert result.status_code == 409, result.text
    assert result.json()["message"] == "killed"
    # Not a pause: wait until every attempt that reached the sleep has left the handler
    # (Trips/book records "left" in a finally, after any compensation it could run), while
    # the broker says the invocation is completed, so no attempt of it starts again. Only
    # then is the trail final: nothing may follow the bookings.
    await eventually(
        lambda: _attempts_left(scenario, key),
        until=lambda counts: counts[1] >= counts[0],
        what="the killed handler's attempts to end",
    )
    [row] = await scenario.env.query(f"SELECT status FROM sys_invocation WHERE id = '{invocation}'")
    assert row["status"] == "completed", row
    assert booking_trail(scenario, key) == [("booked", "flight"), ("booked", "hotel")]


async def test_kill_releases_the_object_key(
    scenario: Scenario, ingress: httpx.AsyncClient, key: str
) -> None:
    invocation = await send(ingress, f"/Counter/{key}/block", HOUR_MS)
    await eventually(
        lambda: call_json(ingress, f"/Counter/{key}/keys"),
        until=lambda keys: "blocked" in keys,
        what="the blocking handler to start",
    )
    killed = await scenario.env.kill_invocation(invocation)
    assert killed.status_code in (200, 202), killed.text
    result = await attach(ingress, invocation)
    assert result.status_code == 409, result.text

    # The exclusive lock is free again, and the killed handler never added its 1000.
    assert await call_json(ingress, f"/Counter/{key}/add", 1) == 1
