"""Handlers for the durable timer test (test 5), written with the Sluice SDK.

``Timer/{id}/nap`` journals the time it starts, sleeps durably, then journals the time it
woke. Each execution of the wake-up step leaves ``woke ID TOKEN TIME`` in
``$SLUICE_TEST_MARKERS`` (a fresh token each time), so the test can count how often the
code after the sleep ran, and which run the journal kept.
"""

from __future__ import annotations

import os
import time
from datetime import timedelta

import sluice
from sluice import ObjectContext, VirtualObject

timer = VirtualObject("Timer")


def _woke(key: str) -> dict[str, object]:
    token, now = os.urandom(8).hex(), time.time()
    with open(os.environ["SLUICE_TEST_MARKERS"], "a") as f:
        f.write(f"woke {key} {token} {now!r}\n")
    return {"token": token, "at": now}


@timer.handler()
async def nap(ctx: ObjectContext, ms: int) -> dict[str, object]:
    started = await ctx.run("start", time.time)
    await ctx.sleep(timedelta(milliseconds=ms))
    woke = await ctx.run("woke", _woke, ctx.key())
    return {"start": started, "ms": ms, **woke}


app = sluice.app(timer)
