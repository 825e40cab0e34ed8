"""The admin ``/query`` over a big table must not stall the broker.

A query over ``sys_invocation`` reads every invocation, however few rows it returns. The
broker runs on one event loop, so a scan that never yields holds up the ingress, the invoker
and the log for all of that time (10,000 invocations: a fifth of a second on an idle machine,
seconds on a busy one).
"""

from __future__ import annotations

import asyncio
import threading
import time

import httpx

from broker.ids import InvocationId
from broker.partition._records import Invoke
from broker.server import Broker
from tests.scenarios.support import eventually

from .conftest import Client, ServiceProcess

INVOCATIONS = 10_000


async def test_query_over_many_invocations_keeps_ingress_answering(
    broker: Broker, client: Client, restate_service: ServiceProcess
) -> None:
    await client.register(restate_service.uri)
    # Straight to the log, as the ingress does, without 10,000 HTTP round trips: sends
    # delayed by an hour, so each is a row of sys_invocation and none runs during the test.
    later = int(time.time() * 1000) + 3_600_000
    for i in range(INVOCATIONS):
        broker.submit(
            Invoke(
                id=InvocationId.generate().raw,
                service="Greeter",
                handler="greet",
                input=f'"q{i}"'.encode(),
                send=True,
                execute_at=later,
            )
        )

    async def rows() -> int:
        return sum(1 for _ in broker.store.scan("status", b""))

    await eventually(rows, until=lambda n: n == INVOCATIONS, what=f"{INVOCATIONS} invocations")

    # Every row is read and none matches: the time is all scan, none is answer. An outside
    # client probes the ingress meanwhile, from a thread, as another process would.
    stop = threading.Event()
    url = f"http://127.0.0.1:{broker.ingress_port}/restate/health"
    spans: list[tuple[float, float]] = []

    def probe() -> None:
        with httpx.Client(timeout=30) as http:
            while not stop.is_set():
                t0 = time.monotonic()
                assert http.get(url).status_code == 200
                spans.append((t0, time.monotonic()))

    async def probed() -> int:
        return len(spans)

    # One query first: on a fresh clone the first one also imports and compiles the query
    # code, which holds the event loop no matter how the scan is paced.
    sql = "SELECT id FROM sys_invocation WHERE status = 'running'"
    assert (await client.admin.post("/query", json={"query": sql + " LIMIT 1"})).status_code == 200
    prober = asyncio.ensure_future(asyncio.to_thread(probe))
    try:
        await eventually(probed, what="the prober's first answer")
        q0 = time.monotonic()
        answer = await client.admin.post("/query", json={"query": sql})
        q1 = time.monotonic()
    finally:
        stop.set()
        await prober
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"rows": []}
    during = [end - start for start, end in spans if end > q0 and start < q1]
    longest = max(during)
    inside = sum(1 for start, end in spans if q0 < start and end < q1)
    # The ingress answered all along. A scan that never yields makes one probe wait for all
    # of it (measured: 74% to 99% of the query's time) and lets none start and finish
    # within it; one that yields, a few slices (15% to 23% on a machine loaded 6 times
    # over). Relative, so a slow machine is no failure; and a probe thread the OS left
    # waiting once still shows the scan yielding if others came and went meanwhile.
    assert longest < (q1 - q0) / 2 or inside >= 3, (
        f"an ingress request waited {longest:.3f}s of the query's {q1 - q0:.3f}s "
        f"and {inside} probes started and ended within it"
    )
