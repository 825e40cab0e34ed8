"""Handlers for the disk-loss test (test 13), written with the Sluice SDK: the ``Program``
object of the program test (services_programs.py), the ``Tally`` object of the Kafka pipeline
(tests/egress/services.py) and ``Nap``, a workflow that sleeps durably.

``Nap/{id}/run`` journals that it fell asleep, sleeps, then journals that it woke. Each
execution of either step leaves ``slept ID TOKEN TIME`` or ``woke ID TOKEN TIME`` in
``$SLUICE_TEST_MARKERS`` (a fresh token each time), beside the program's ``run`` and ``awk``
lines: the test tells which workflows were asleep when the broker died, and counts how often
the step after the sleep ran.
"""

from __future__ import annotations

import os
import time
from datetime import timedelta
from typing import Any

import sluice
from sluice import Workflow, WorkflowContext
from tests.egress.services import tally
from tests.reliability.services_programs import program

nap = Workflow("Nap")


def _mark(kind: str, key: str) -> dict[str, Any]:
    token, now = os.urandom(8).hex(), time.time()
    with open(os.environ["SLUICE_TEST_MARKERS"], "a") as f:
        f.write(f"{kind} {key} {token} {now!r}\n")
    return {"token": token, "at": now}


@nap.main()
async def run(ctx: WorkflowContext, ms: int) -> dict[str, Any]:
    slept = await ctx.run("slept", _mark, "slept", ctx.key())
    await ctx.sleep(timedelta(milliseconds=ms))
    woke = await ctx.run("woke", _mark, "woke", ctx.key())
    return {"start": slept["at"], "ms": ms, **woke}


app = sluice.app(program, tally, nap)
