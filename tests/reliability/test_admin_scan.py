"""Big admin reads share the broker's event loop: the ingress keeps answering while they run.

A real broker process holds tens of thousands of invocations (scheduled a day ahead by
``bulk_services``, so no handler runs meanwhile). From this process, outside the broker, a
probe asks the ingress ``GET /restate/health`` every 10 ms on its own connection while
``GET /invocations`` (no limit) and ``POST /query`` (``SELECT *`` over ``sys_invocation``) read
the whole table. Asserted, for each read: it returns every row; it takes long enough to matter
(at least ``MIN_SCAN_S``); and no probe request overlapping it waits more than ``STALL_SHARE``
of its duration. A read that held the loop from first row to last byte would make one probe
wait about as long as the read itself (over 90% of it when ``paced`` did not yield); one that
encoded its 20 MB answer in a single ``json.dumps`` held it 0.2 to 0.4 s at the end.
"""

from __future__ import annotations

import asyncio
import gc
import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from sluice.testing import HandlerProcess, SluiceBroker, TestEnvironment

from .conftest import peak_rss_mb, sized

pytestmark = [pytest.mark.slow, pytest.mark.timeout(sized(180, 900))]

ROWS = sized(60_000, 240_000)  # the reads last ~1 s here, over MIN_SCAN_S on a faster machine
SPAN = 1_000  # scheduled invocations per Bulk.spread call
PROBE_EVERY_S = 0.010
MIN_SCAN_S = 0.3  # shorter reads could not stall anything noticeably: the test would prove nothing
# A probe may wait for one paced step of the read (64 rows: a few milliseconds) and for its
# own turn and the broker's on a shared 2-core machine (up to ~100 ms seen under load); a
# quarter of the read is well above that and well below the whole read, which is what a read
# holding the loop costs a probe.
STALL_SHARE = 0.25

Probe = list[tuple[float, float]]  # (sent, answered), perf_counter seconds


async def _probe(env: TestEnvironment, out: Probe, stop: asyncio.Event) -> None:
    """One keep-alive connection, one request every ``PROBE_EVERY_S`` (or when the last returns)."""
    async with env.ingress_client(limits=httpx.Limits(max_connections=1)) as ingress:
        while not stop.is_set():
            sent = time.perf_counter()
            r = await ingress.get("/restate/health")
            answered = time.perf_counter()
            assert r.status_code == 200, r.text
            out.append((sent, answered))
            await asyncio.sleep(max(0.0, sent + PROBE_EVERY_S - answered))


async def _fill(env: TestEnvironment) -> None:
    async with env.ingress_client(timeout=120) as ingress:

        async def spread(start: int) -> None:
            r = await ingress.post("/Bulk/spread", json=[start, min(start + SPAN, ROWS)])
            assert r.status_code == 200, r.text

        await asyncio.gather(*(spread(s) for s in range(0, ROWS, SPAN)))
    # The sends reach their partitions after Bulk.spread returns: wait until all are rows.
    deadline = time.monotonic() + 60
    while len(await env.query("SELECT id FROM sys_invocation WHERE status = 'scheduled'")) < ROWS:
        assert time.monotonic() < deadline, f"fewer than {ROWS} scheduled invocations after 60 s"
        await asyncio.sleep(0.5)


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


@dataclass
class Read:
    figures: dict[str, Any]  # its duration, size, and the latencies of the probes during it
    status: int
    body: bytes


async def _measured(
    admin: httpx.AsyncClient, probe: Probe, method: str, path: str, **kw: Any
) -> Read:
    """Runs one whole-table read under the probe.

    The body is kept in the pieces it arrived in until the read is timed: joining or decoding
    20 MB here would hold this process's loop, and the probe with it.
    """
    start = time.perf_counter()
    async with admin.stream(method, path, **kw) as response:
        pieces = [piece async for piece in response.aiter_raw()]
    end = time.perf_counter()
    await asyncio.sleep(0.3)  # the probe request in flight when the read ended comes back
    body = b"".join(pieces)
    during = [b - a for a, b in probe if a < end and b > start]
    figures = {
        "scan_ms": _ms(end - start),
        "body_mb": round(len(body) / 1e6, 1),
        "probes": len(during),
        "probe_p50_ms": _ms(statistics.median(during)) if during else None,
        "probe_max_ms": _ms(max(during)) if during else None,
    }
    return Read(figures, response.status_code, body)


async def test_whole_table_reads_leave_the_ingress_responsive(
    tmp_path: Path, figures: dict[str, Any]
) -> None:
    env = TestEnvironment(
        SluiceBroker(work_dir=tmp_path / "broker"),
        HandlerProcess("tests.reliability.bulk_services:app", work_dir=tmp_path / "handler"),
    )
    with env:
        t0 = time.monotonic()
        await _fill(env)
        figures["rows"] = ROWS
        figures["fill_s"] = round(time.monotonic() - t0, 1)

        probe: Probe = []
        stop = asyncio.Event()
        prober = asyncio.ensure_future(_probe(env, probe, stop))
        # This process's own collector paused the probe up to 0.1 s between the two reads:
        # the probe is to time the broker's loop, not this one's.
        gc.collect()
        gc.disable()
        try:
            async with env.admin_client(timeout=120) as admin:  # made before any timing
                await asyncio.sleep(0.5)  # the probe's latency with nothing else going on
                baseline = [b - a for a, b in probe]
                listed = await _measured(
                    admin, probe, "GET", "/invocations", params={"limit": str(10**9)}
                )
                queried = await _measured(
                    admin, probe, "POST", "/query", json={"query": "SELECT * FROM sys_invocation"}
                )
        finally:
            gc.enable()
            stop.set()
            await prober
        figures["probe_idle_p50_ms"] = _ms(statistics.median(baseline))
        figures["probe_idle_max_ms"] = _ms(max(baseline))
        figures["get_invocations"] = listed.figures
        figures["post_query"] = queried.figures
        figures["broker_peak_rss_mb"] = peak_rss_mb(env.broker.pid) if env.broker.pid else None

        assert listed.status == 200, listed.body[:500]
        assert queried.status == 200, queried.body[:500]
        # ROWS / SPAN rows more: the Bulk.spread invocations themselves, completed.
        assert len(json.loads(listed.body)["invocations"]) == ROWS + ROWS // SPAN
        assert len(json.loads(queried.body)["rows"]) == ROWS + ROWS // SPAN
        for name, got in (("GET /invocations", listed.figures), ("POST /query", queried.figures)):
            scan_s = got["scan_ms"] / 1000
            assert scan_s >= MIN_SCAN_S, (
                f"{name} read {ROWS} rows in {scan_s:.3f} s: too fast for a stall to show; "
                f"raise ROWS ({figures})"
            )
            assert got["probes"] >= 2, f"the probe did not run during {name}: {figures}"
            assert got["probe_max_ms"] / 1000 <= STALL_SHARE * scan_s, (
                f"an ingress request waited {got['probe_max_ms']} ms during {name}, which took "
                f"{got['scan_ms']} ms: the read held the event loop ({figures})"
            )
