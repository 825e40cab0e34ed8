"""What the kill tests share: a broker that gets SIGKILLed on a schedule, and a client that
retries until it gets an answer.

The broker and the handler service are ``sdk.testing`` processes (a real ``python -m sluice.broker
server`` and hypercorn over HTTP/2); the handler service is never killed here, only the broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import statistics
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx

from sluice.testing import HandlerProcess, SluiceBroker, TestEnvironment

from .conftest import peak_rss_mb

T = TypeVar("T")


def environment(
    tmp_path: Path, target: str, markers: Path, log: tuple[str, ...] = ()
) -> TestEnvironment:
    """A Sluice broker (on the log ``log``: its ``sluice server`` flags) and the handler app
    ``target``, logs kept under ``tmp_path``; the handlers append their side-effect markers to
    ``markers`` ($SLUICE_TEST_MARKERS)."""
    env = {"SLUICE_TEST_MARKERS": str(markers)}
    return TestEnvironment(
        SluiceBroker(work_dir=tmp_path / "broker", extra_args=list(log)),
        HandlerProcess(target, env=env, work_dir=tmp_path / "handler"),
    )


@dataclass
class Killer:
    """SIGKILLs the broker every ``every`` seconds (uniform in the range) and restarts it.

    Records when each kill happened, how long each restart took (process start to both
    health checks answering) and the broker's peak RSS over all its lives.
    """

    broker: SluiceBroker
    rng: random.Random
    every: tuple[float, float]
    max_kills: int | None = None
    kills: list[float] = field(default_factory=list)  # time.monotonic() of each SIGKILL
    ready: list[float] = field(default_factory=list)  # ... and of the restart that followed
    restart_s: list[float] = field(default_factory=list)
    peak_rss: float = 0.0

    def sample_rss(self) -> None:
        """Fold the running broker's peak RSS in; a broker that is not running has none."""
        pid = self.broker.pid
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                self.peak_rss = max(self.peak_rss, peak_rss_mb(pid))

    async def run(self, until: asyncio.Event) -> None:
        while self.max_kills is None or len(self.kills) < self.max_kills:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(until.wait(), self.rng.uniform(*self.every))
            if until.is_set():
                return
            self.sample_rss()
            self.kills.append(time.monotonic())
            self.broker.kill()
            started = time.monotonic()
            await asyncio.to_thread(self.broker.start)
            self.ready.append(time.monotonic())
            self.restart_s.append(self.ready[-1] - started)

    def recovery(self, progress: list[float]) -> list[float]:
        """Seconds from each kill to the first progress (a completion time) after the restart.

        Answers that were on their way when the broker died arrive during the restart; they
        are not recovery, so only completions after the broker is healthy again count.
        """
        done = sorted(progress)
        out = []
        for killed, ready in zip(self.kills, self.ready, strict=False):
            after = [t for t in done if t > ready]
            if after:
                out.append(after[0] - killed)
        return out


def spread(values: list[float]) -> dict[str, float]:
    """Median, p99 and max, rounded for the figures."""
    if not values:
        return {"median": 0.0, "p99": 0.0, "max": 0.0}
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return {
        "median": round(statistics.median(ordered), 3),
        "p99": round(p99, 3),
        "max": round(ordered[-1], 3),
    }


async def open_invocations(env: TestEnvironment) -> str:
    """The invocations that are not completed, with both logs: what a stuck test reports."""
    try:
        rows = await env.query(
            "SELECT id, target, status, retry_count, last_failure, journal_size, "
            "idempotency_key FROM sys_invocation"
        )
    except Exception as e:  # the report must be made whatever failed
        return f"(query failed: {e!r})\n{env.logs()}"
    open_rows = [r for r in rows if r["status"] != "completed"]
    by_status = Counter(r["status"] for r in open_rows)
    shown = "\n".join(json.dumps(r) for r in open_rows[:60])
    return (
        f"{len(rows)} invocations, {len(open_rows)} open {dict(by_status)}:\n{shown}\n{env.logs()}"
    )


class Rejected(AssertionError):
    """The broker answered a retried request with a 4xx: the request is wrong or Sluice is."""


@dataclass
class Retrying:
    """A client that resends (same idempotency key) on connection errors, timeouts and 5xx."""

    client: httpx.AsyncClient
    pause: float = 0.1
    retries: int = 0

    async def post(
        self, url: str, body: Any, *, ok: int, idempotency_key: str | None = None
    ) -> httpx.Response:
        headers = {"content-type": "application/json"}
        if idempotency_key is not None:
            headers["idempotency-key"] = idempotency_key
        return await self.request("POST", url, ok=ok, json=body, headers=headers)

    async def request(self, method: str, url: str, *, ok: int, **kw: Any) -> httpx.Response:
        while True:
            try:
                r = await self.client.request(method, url, **kw)
            except httpx.UnsupportedProtocol:
                raise  # a URL with no scheme or host (no base_url): no retry mends it
            except httpx.TransportError:
                pass
            else:
                if r.status_code == ok:
                    return r
                if r.status_code < 500:
                    raise Rejected(f"{method} {url} -> {r.status_code} {r.text}")
            self.retries += 1
            await asyncio.sleep(self.pause)


@dataclass
class ClosedLoop:
    """``workers`` clients, one connection each, that take the next item when done with one.

    One connection per client because httpx's pool scans every connection for every request:
    a hundred requests through one pool cost the test more CPU than the broker spends.
    """

    env: TestEnvironment
    workers: int
    clients: list[Retrying] = field(default_factory=list)

    @property
    def retries(self) -> int:
        return sum(c.retries for c in self.clients)

    async def run(self, items: Iterable[T], fn: Callable[[Retrying, T], Awaitable[None]]) -> None:
        todo = iter(items)
        limits = httpx.Limits(max_connections=1)

        async def worker() -> None:
            async with self.env.ingress_client(timeout=30, limits=limits) as http:
                client = Retrying(http)
                self.clients.append(client)
                for item in todo:
                    await fn(client, item)

        await asyncio.gather(*(worker() for _ in range(self.workers)))
