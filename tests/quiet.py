"""Waiting until the brokers are quiet (GET /activity says nothing is left to do), before a
test reads what they produced: a count that reached N says nothing of a duplicate still on
its way, and a second of silence is no proof either.

The brokers the test fixtures start (``running_broker``, ``BrokerProcess``) enter ``LIVE``
by their admin port while they run, so that a helper that reads results (``read_output``,
``Admin.wait_counts``) waits for each of them without being told which.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from typing import Any

import httpx

LIVE: set[int] = set()  # the admin ports of the brokers the fixtures run now


def _ports(ports: Iterable[int] | None) -> list[int]:
    """The admin ports to ask; an explicit empty ``ports`` says the brokers are stopped (a
    stopped broker produces nothing more), while none running by default is a test's mistake."""
    if ports is not None:
        return sorted(ports)
    out = sorted(LIVE)
    if not out:
        raise AssertionError(
            "no broker to wait for: start it with running_broker or BrokerProcess, or pass"
            " its admin port"
        )
    return out


def _not_quiet(port: int, r: httpx.Response | Exception) -> str:
    if isinstance(r, Exception):
        return f"admin port {port}: {type(r).__name__}: {r}"
    if r.status_code != 200:
        return f"admin port {port}: HTTP {r.status_code} {r.text[:300]}"
    body: dict[str, Any] = r.json()
    return "" if body["quiet"] else f"admin port {port}: {body}"


def wait_quiet(ports: Iterable[int] | None = None, within: float = 60.0) -> None:
    """Block until every broker (``ports``: their admin ports; default ``LIVE``) is quiet;
    an AssertionError names what is left after ``within`` seconds. Not from the event loop
    that runs an in-process broker (it would wait for itself): use ``until_quiet`` there."""
    deadline = time.monotonic() + within
    asked = _ports(ports)
    with httpx.Client(timeout=10) as c:
        while True:
            left = []
            for port in asked:
                try:
                    r: httpx.Response | Exception = c.get(f"http://127.0.0.1:{port}/activity")
                except httpx.HTTPError as e:  # (restarting after a kill)
                    r = e
                left.append(_not_quiet(port, r))
            if not any(left):
                return
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"not quiet after {within:g}s: {'; '.join(filter(None, left))}"
                )
            time.sleep(0.1)


async def until_quiet(ports: Iterable[int] | None = None, within: float = 60.0) -> None:
    """``wait_quiet`` for a coroutine: it polls from a thread, so that the event loop goes
    on serving an in-process broker meanwhile."""
    await asyncio.to_thread(wait_quiet, ports, within)
