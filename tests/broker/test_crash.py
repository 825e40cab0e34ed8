"""Crash test: SIGKILL the broker with many invocations in flight, restart, repeat.

Every accepted invocation must complete exactly once: counters equal the number of accepted
requests, and no `run` step whose result was journaled executes again.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from pathlib import Path

import httpx

from tests.conftest import ServerLog
from tests.quiet import until_quiet

from .conftest import BrokerProcess, ServiceProcess

ADDS = 500  # counter increments, each with its own idempotency key, clients wait for results
WORKS = 500  # sends of a handler with a run step, a sleep and a call
KILLS = 3


async def post_until_ok(
    c: httpx.AsyncClient, url: str, body: bytes, key: str, ok: int
) -> httpx.Response:
    """A client that retries (same idempotency key) until the broker answers."""
    while True:
        try:
            r = await c.post(url, content=body, headers={"idempotency-key": key})
            if r.status_code == ok:
                return r
        except httpx.HTTPError:
            pass
        await asyncio.sleep(0.1)


async def test_sigkill_restart_exactly_once(tmp_path: Path, server_log: ServerLog) -> None:
    markers = tmp_path / "runs.txt"
    svc = ServiceProcess("tests.broker.restate_services", {"SLUICE_TEST_MARKERS": str(markers)})
    svc.start()
    broker = BrokerProcess(tmp_path / "data", *server_log.flags())
    broker.start()
    try:
        limits = httpx.Limits(max_connections=200)
        async with httpx.AsyncClient(timeout=60, limits=limits) as c:
            r = await c.post(f"http://127.0.0.1:{broker.admin}/deployments", json={"uri": svc.uri})
            assert r.status_code == 201, r.text
            base = f"http://127.0.0.1:{broker.ingress}"
            sem = asyncio.Semaphore(150)

            async def add(i: int) -> int:
                async with sem:
                    r = await post_until_ok(
                        c, f"{base}/Counter/crash-adds/add", b"1", f"add-{i}", 200
                    )
                    return int(r.json())

            async def work(i: int) -> str:
                async with sem:
                    r = await post_until_ok(
                        c, f"{base}/Worker/process/send", f'"w{i}"'.encode(), f"w-{i}", 202
                    )
                    return str(r.json()["invocationId"])

            tasks = [asyncio.ensure_future(add(i)) for i in range(ADDS)]
            tasks += [asyncio.ensure_future(work(i)) for i in range(WORKS)]
            for _ in range(KILLS):
                await asyncio.sleep(1.0)
                broker.kill()
                await asyncio.to_thread(broker.start)
            results = await asyncio.wait_for(asyncio.gather(*tasks), 90)
            adds = sorted(int(x) for x in results[:ADDS])
            assert adds == list(range(1, ADDS + 1)), "an increment was lost or applied twice"

            async def value(key: str) -> int:
                r = await c.post(f"{base}/Counter/{key}/get")
                return int(r.json())

            # Every send done (nothing running, sleeping or queued): an extra add would show.
            await until_quiet([broker.admin], within=90)
            assert await value("crash-total") == WORKS
            assert await value("crash-adds") == ADDS

            # The journaled token of each run must be the last execution of that run step.
            runs: dict[str, list[str]] = defaultdict(list)
            for line in markers.read_text().split("\n"):
                if line:
                    item, token = line.split()
                    runs[item].append(token)
            assert len(runs) == WORKS
            reran = 0
            for i, iid in enumerate(results[ADDS:]):
                out = await c.get(f"{base}/restate/invocation/{iid}/output")
                assert out.status_code == 200, out.text
                journaled = out.json()
                assert journaled in runs[f"w{i}"]
                assert runs[f"w{i}"][-1] == journaled, f"w{i}: a journaled run step executed again"
                reran += len(runs[f"w{i}"]) - 1
            print(f"runs re-executed before their result was journaled: {reran}")
    finally:
        err = broker.stop()
        svc.stop()
    assert "Traceback" not in err, err[-3000:]
