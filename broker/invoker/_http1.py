"""HTTP/1.1 request/response for the request-response protocol mode (and for discovery)."""

from __future__ import annotations

import asyncio


class Http1Pool:
    """Keep-alive connections to one host:port, one request at a time on each."""

    def __init__(self, host: str, port: int, *, max_idle: int = 64) -> None:
        self.host = host
        self.port = port
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self._max_idle = max_idle

    async def request(
        self, method: str, path: str, headers: list[tuple[str, str]], body: bytes = b""
    ) -> tuple[int, dict[str, str], bytes]:
        for attempt in range(2):
            reused = bool(self._idle)
            if reused:
                reader, writer = self._idle.pop()
            else:
                reader, writer = await asyncio.open_connection(self.host, self.port)
            try:
                status, hdrs, data, keep = await _exchange(
                    reader, writer, self.host, self.port, method, path, headers, body
                )
            except (ConnectionError, asyncio.IncompleteReadError):
                writer.close()
                if reused and attempt == 0:
                    continue  # a stale keep-alive connection: retry on a fresh one
                raise
            except BaseException:
                writer.close()
                raise
            if keep and len(self._idle) < self._max_idle:
                self._idle.append((reader, writer))
            else:
                writer.close()
            return status, hdrs, data
        raise ConnectionError("unreachable")

    def close(self) -> None:
        for _, w in self._idle:
            w.close()
        self._idle.clear()


async def _exchange(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    host: str,
    port: int,
    method: str,
    path: str,
    headers: list[tuple[str, str]],
    body: bytes,
) -> tuple[int, dict[str, str], bytes, bool]:
    head = [f"{method} {path} HTTP/1.1", f"host: {host}:{port}", f"content-length: {len(body)}"]
    head += [f"{k}: {v}" for k, v in headers]
    writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)
    await writer.drain()
    status_line = await reader.readuntil(b"\r\n")
    parts = status_line.decode("latin-1").split(" ", 2)
    if len(parts) < 2:
        raise ConnectionError(f"bad status line {status_line!r}")
    status = int(parts[1])
    hdrs: dict[str, str] = {}
    while True:
        line = await reader.readuntil(b"\r\n")
        if line == b"\r\n":
            break
        k, _, v = line.decode("latin-1").partition(":")
        hdrs[k.strip().lower()] = v.strip()
    keep = hdrs.get("connection", "").lower() != "close"
    if "content-length" in hdrs:
        data = await reader.readexactly(int(hdrs["content-length"]))
    elif "chunked" in hdrs.get("transfer-encoding", "").lower():
        buf = bytearray()
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.split(b";", 1)[0].strip(), 16)
            if size == 0:
                while (await reader.readuntil(b"\r\n")) != b"\r\n":
                    pass
                break
            buf += await reader.readexactly(size)
            await reader.readexactly(2)
        data = bytes(buf)
    else:
        data = await reader.read()
        keep = False
    return status, hdrs, data, keep


async def http1_request(
    host: str, port: int, method: str, path: str, headers: list[tuple[str, str]], body: bytes = b""
) -> tuple[int, dict[str, str], bytes]:
    pool = Http1Pool(host, port, max_idle=0)
    try:
        return await pool.request(method, path, headers, body)
    finally:
        pool.close()
