"""SIGKILL the broker while an invocation sleeps: after a restart on the same data it resumes.

The timer and the journal are durable: the sleep still ends, and the steps that ran before the
crash are replayed from the journal, not executed again.
"""

from __future__ import annotations

import httpx

from .support import Scenario, attach, booking_trail, send, wait_for_payment_window


async def test_broker_sigkill_during_a_sleep_resumes_the_invocation(
    scenario: Scenario, ingress: httpx.AsyncClient, key: str
) -> None:
    invocation = await send(ingress, "/Trips/book", {"trip": key, "wait_ms": 1500})

    await wait_for_payment_window(scenario, key)
    scenario.env.broker.restart(kill=True)

    # A timer lost in the crash never ends the sleep: the attach then times out. How long the
    # restart and the rest take is the machine's business, not the timer's.
    async with scenario.env.ingress_client(timeout=30.0) as fresh:
        result = await attach(fresh, invocation)
    assert result.status_code == 200, f"{result.text}\n{scenario.env.logs()}"
    assert result.json() == ["flight", "hotel", "car"]
    assert booking_trail(scenario, key) == [("booked", i) for i in ("flight", "hotel", "car")]
