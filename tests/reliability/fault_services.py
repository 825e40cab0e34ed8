"""Sluice SDK handlers for the handler-fault test (test 8): one that the test SIGKILLs
mid-invocation, one that hangs. Keys starting with ``ok-`` run normally: they are the
"other keys of the same object" that must keep completing while the faulty keys misbehave.

Each attempt appends ``attempt <key> <time>`` to ``$SLUICE_FAULT_MARKERS``; the journaled
step appends ``run <key> <time>`` once per invocation, so a retry that re-ran it would show
twice. Once the file ``$SLUICE_FAULT_MARKERS.healed`` exists, ``Killable`` stops holding its
attempts.
"""

from __future__ import annotations

import asyncio
import os
import time

import sluice
from sluice import ObjectContext, VirtualObject

HOLD_S = 30.0  # how long a faulty key's attempt stays in the handler (killed or timed out first)


def _mark(what: str, key: str) -> str:
    line = f"{what} {key} {time.time():.4f}"
    path = os.environ.get("SLUICE_FAULT_MARKERS")
    if path:
        with open(path, "a") as f:
            f.write(line + "\n")
    return line


def _healed() -> bool:
    return os.path.exists(os.environ.get("SLUICE_FAULT_MARKERS", "") + ".healed")


killable = VirtualObject("Killable")


@killable.handler()
async def work(ctx: ObjectContext, payload: str) -> str:
    key = ctx.key()
    await ctx.run("once", lambda: _mark("run", key))
    _mark("attempt", key)
    if not key.startswith("ok-") and not _healed():
        await asyncio.sleep(HOLD_S)  # the test SIGKILLs the process meanwhile
    return payload


hanging = VirtualObject("Hanging")


@hanging.handler(name="work")
async def hang(ctx: ObjectContext, payload: str) -> str:
    key = ctx.key()
    _mark("attempt", key)
    if not key.startswith("ok-"):
        # A dependency that never answers: not a journaled await, so the handler cannot suspend.
        await asyncio.sleep(3600)
    return payload


kill_app = sluice.app(killable)
hang_app = sluice.app(hanging)
