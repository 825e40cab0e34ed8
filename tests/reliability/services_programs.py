"""Handlers for the program test (test 4), written with the Sluice SDK, served by hypercorn.

A program is a list of steps that ``Program/{key}/execute`` runs in order: ``add`` (state
update on its own key), ``call`` (``add`` on another key, awaited), ``send`` (``add`` on any
key, one-way, delayed), ``awake`` (an awakeable that the test client resolves; its value is
added) and ``run`` (a journaled side effect). Every update adds 1 to ``count`` and its
delta to ``sum``, so that the test can tell lost updates from duplicated ones.

Side effects leave a line in ``$SLUICE_TEST_MARKERS``: ``run PID STEP TOKEN`` for each
execution of a ``run`` step (a fresh token each time), ``awk PID STEP ID`` when an
awakeable is published for the test to resolve.
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

import sluice
from sluice import ObjectContext, ObjectSharedContext, VirtualObject

program = VirtualObject("Program")

_EMPTY = {"count": 0, "sum": 0}


def _mark(kind: str, pid: str, step: int, value: str) -> str:
    # One short line per write, in append mode: lines of concurrent writers never interleave.
    with open(os.environ["SLUICE_TEST_MARKERS"], "a") as f:
        f.write(f"{kind} {pid} {step} {value}\n")
    return value


async def _update(ctx: ObjectContext, delta: int) -> None:
    totals = (await ctx.get("totals", type_hint=dict[str, int])) or dict(_EMPTY)
    ctx.set("totals", {"count": totals["count"] + 1, "sum": totals["sum"] + delta})


@program.handler()
async def add(ctx: ObjectContext, delta: int) -> None:
    await _update(ctx, delta)


@program.handler(kind="shared")
async def totals(ctx: ObjectSharedContext) -> dict[str, int]:
    return (await ctx.get("totals", type_hint=dict[str, int])) or dict(_EMPTY)


@program.handler()
async def execute(ctx: ObjectContext, prog: dict[str, Any]) -> dict[str, Any]:
    """Run the steps; answer with the journaled token of each ``run`` step."""
    pid: str = prog["id"]
    runs: dict[str, str] = {}
    for i, step in enumerate(prog["steps"]):
        op, n = step["op"], step["n"]
        if op == "add":
            await _update(ctx, n)
        elif op == "call":
            await ctx.object_call(add, key=step["key"], arg=n)
        elif op == "send":
            delay = timedelta(milliseconds=step["delay_ms"])
            ctx.object_send(add, key=step["key"], arg=n, delay=delay)
        elif op == "awake":
            awk_id, value = ctx.awakeable(type_hint=int)
            await ctx.run(f"publish-{i}", _mark, "awk", pid, i, awk_id)
            await _update(ctx, await value)
        elif op == "run":
            runs[str(i)] = await ctx.run(f"run-{i}", _mark, "run", pid, i, os.urandom(8).hex())
        else:
            raise sluice.TerminalError(f"unknown step {op!r}", status_code=400)
    return {"id": pid, "runs": runs}


app = sluice.app(program)
