"""Test 5: durable timers across broker kills.

Invocations of ``services_timers.nap`` start over a window of seconds, each journaling its
start time and then sleeping 1 to 5 s, while the broker is SIGKILLed and restarted every 2
to 5 s. Every sleep must end exactly once (one invocation per timer, and the step after the
sleep never runs again once journaled) and never early: the journaled wake time is at least
the journaled start plus the duration, within the clock's granularity.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ServerLog

from ._chaos import ClosedLoop, Killer, Retrying, environment, open_invocations, spread
from .conftest import sized

pytestmark = [pytest.mark.slow, pytest.mark.timeout(sized(180, 1200))]

TIMERS = sized(500, 5_000)
START_WINDOW_S = sized(10.0, 100.0)  # timers start spread over this many seconds
GRANULARITY_S = 0.002  # the SDK and the broker count milliseconds, rounded down
CLIENTS = 40  # closed-loop clients that start timers, then await their outputs


def executions(path: Path) -> dict[str, list[tuple[str, float]]]:
    """Timer id -> (token, time) of every run of the step after its sleep, in order."""
    out: dict[str, list[tuple[str, float]]] = defaultdict(list)
    if path.exists():
        for line in path.read_text().splitlines():
            _, tid, token, at = line.split()
            out[tid].append((token, float(at)))
    return out


async def test_timers_fire_once_and_never_early(  # noqa: PLR0915 - one scenario, in order
    tmp_path: Path, rng: random.Random, figures: dict[str, Any], server_log: ServerLog
) -> None:
    run = f"{rng.getrandbits(32):08x}"
    plan = [
        (f"t{run}-{i}", rng.randint(1000, 5000), rng.uniform(0, START_WINDOW_S))
        for i in range(TIMERS)
    ]
    markers = tmp_path / "markers.txt"
    target = "tests.reliability.services_timers:app"
    env = environment(tmp_path, target, markers, server_log.flags())
    figures.update(timers=TIMERS)
    env.start()
    killer = Killer(env.broker, rng, every=(2.0, 5.0))  # type: ignore[arg-type]
    loop = ClosedLoop(env, CLIENTS)
    ids: dict[str, str] = {}
    outs: dict[str, dict[str, Any]] = {}

    async def start(client: Retrying, timer: tuple[str, int, float]) -> None:
        tid, ms, at = timer
        await asyncio.sleep(max(0.0, t0 + at - time.monotonic()))
        r = await client.post(f"/Timer/{tid}/nap/send", ms, ok=202, idempotency_key=tid)
        ids[tid] = r.json()["invocationId"]

    async def output(client: Retrying, timer: tuple[str, int, float]) -> None:
        r = await client.request("GET", f"/restate/invocation/{ids[timer[0]]}/attach", ok=200)
        outs[timer[0]] = r.json()

    try:
        done = asyncio.Event()
        kills = asyncio.ensure_future(killer.run(done))
        t0 = time.monotonic()
        try:
            await loop.run(sorted(plan, key=lambda t: t[2]), start)
            # Keep killing until the last timer is due.
            await asyncio.sleep(max(0.0, t0 + START_WINDOW_S + 5 - time.monotonic()))
        finally:
            done.set()
            await kills
        figures.update(kills=len(killer.kills), restart_s=spread(killer.restart_s))
        try:
            await asyncio.wait_for(loop.run(plan, output), 60)
        except TimeoutError:
            pytest.fail(f"timers did not fire within 60 s\n{await open_invocations(env)}")
        invocations = await env.query(
            "SELECT target_service_key FROM sys_invocation WHERE target_service_name = 'Timer'"
        )
        killer.sample_rss()
    finally:
        env.close()

    runs = executions(markers)
    per_key = Counter(r["target_service_key"] for r in invocations)
    early, late, dup, before = [], [], [], 0
    for tid, ms, _ in plan:
        out = outs[tid]
        assert out["ms"] == ms, f"{tid}: answered {out}"
        due = out["start"] + ms / 1000
        if out["at"] < due - GRANULARITY_S:
            early.append(f"{tid}: woke {due - out['at']:.3f}s early")
        late.append(out["at"] - due)
        tokens = [token for token, _ in runs[tid]]
        assert out["token"] in tokens, f"{tid}: journaled {out}, executions {runs[tid]}"
        at = tokens.index(out["token"])
        before += at
        if at != len(tokens) - 1 or per_key[tid] != 1:
            dup.append(f"{tid}: {per_key[tid]} invocations, executions {runs[tid]}, kept {at}")
    figures.update(
        early_fires=len(early),
        duplicate_fires=len(dup),
        reexecuted_before_journaled=before,
        lateness_s=spread(late),
        client_retries=loop.retries,
        peak_rss_mb=round(killer.peak_rss, 1),
    )
    assert killer.kills, "the broker was never killed: the test proved nothing"
    assert not early, "\n".join(early[:30])
    assert not dup, "\n".join(dup[:30])
    assert len(per_key) == TIMERS
