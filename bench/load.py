"""A small closed-loop HTTP/1.1 load generator: one keep-alive connection per client."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field


@dataclass
class LoadResult:
    requests: int = 0
    errors: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)

    @property
    def throughput(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        xs = sorted(self.latencies)
        return xs[min(len(xs) - 1, int(q * len(xs)))] * 1000


async def _client(
    host: str, port: int, make_path: object, body: bytes, stop_at: float, res: LoadResult, cid: int
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    n = 0
    try:
        while time.monotonic() < stop_at:
            path = make_path(cid, n) if callable(make_path) else make_path
            n += 1
            ctype = "content-type: application/json\r\n" if body else ""
            req = (
                f"POST {path} HTTP/1.1\r\nhost: {host}\r\n{ctype}"
                f"content-length: {len(body)}\r\n\r\n"
            ).encode() + body
            t0 = time.monotonic()
            writer.write(req)
            line = await reader.readuntil(b"\r\n")
            status = int(line.split(b" ")[1])
            length = 0
            while True:
                h = await reader.readuntil(b"\r\n")
                if h == b"\r\n":
                    break
                if h[:15].lower() == b"content-length:":
                    length = int(h[15:].strip())
            if length:
                await reader.readexactly(length)
            res.latencies.append(time.monotonic() - t0)
            if status >= 400:
                res.errors += 1
            res.requests += 1
    finally:
        writer.close()


async def run_load(
    host: str,
    port: int,
    path: object,
    body: bytes,
    *,
    clients: int,
    seconds: float,
    warmup: float = 1.0,
) -> LoadResult:
    if warmup > 0:
        await run_load(host, port, path, body, clients=clients, seconds=warmup, warmup=0)
    res = LoadResult()
    t0 = time.monotonic()
    stop_at = t0 + seconds
    await asyncio.gather(
        *(_client(host, port, path, body, stop_at, res, i) for i in range(clients))
    )
    res.seconds = time.monotonic() - t0
    return res
