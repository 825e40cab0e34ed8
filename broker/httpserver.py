"""A small HTTP/1.1 server on asyncio.Protocol: keep-alive, Content-Length and chunked request
bodies with a size limit enforced while reading, one request at a time per connection, and a
read timeout: a request must arrive whole within it from its first byte (a slow sender whose
headers are in gets 408, one stalled mid-headers is closed), and an idle connection closes
after it, so that slow or silent clients cannot hold connections forever (slowloris).

Lean on purpose: the ingress hot path is parse, append to the log, wait, answer.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, cast
from urllib.parse import parse_qsl, unquote

from sluice.broker.errors import Fatal

_REASONS = {
    200: "OK",
    201: "Created",
    202: "Accepted",
    204: "No Content",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    409: "Conflict",
    413: "Payload Too Large",
    415: "Unsupported Media Type",
    422: "Unprocessable Entity",
    470: "Not Ready",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
}


@dataclass(slots=True)
class Request:
    method: str
    target: str
    headers: dict[str, str]
    body: bytes = b""
    path: str = ""
    query: dict[str, str] = field(default_factory=dict)

    def segments(self) -> list[str]:
        return [unquote(s) for s in self.path.strip("/").split("/")] if self.path.strip("/") else []


@dataclass(slots=True)
class Response:
    status: int = 200
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)
    content_type: str | None = None
    # A big body in pieces, sent after ``body`` one by one: joining 20 MB into one bytes
    # object would hold the event loop for tens of milliseconds.
    parts: list[bytes] = field(default_factory=list)


def json_response(status: int, obj: Any, headers: list[tuple[str, str]] | None = None) -> Response:
    return Response(status, json.dumps(obj).encode(), headers or [], "application/json")


# How long a client should wait after a 503 of a broker that failed and is restarting.
RETRY_AFTER_FATAL_S = 5


def unavailable(reason: str) -> Response:
    """The answer of a broker whose log or tables failed (broker/errors.py): it exits and
    is restarted, so the same request later is the right thing to do."""
    return json_response(
        503,
        {"code": 503, "message": f"unavailable: {reason}; retry after {RETRY_AFTER_FATAL_S}s"},
        [("retry-after", str(RETRY_AFTER_FATAL_S))],
    )


Handler = Callable[[Request], Awaitable[Response]]


class _BodyTooLarge(Exception):
    pass


class _Stream(Protocol):
    """What a connection uses of its transport. asyncio's and uvloop's TCP transports both
    have it, though uvloop's does not derive from asyncio.Transport."""

    def write(self, data: bytes) -> None: ...

    def close(self) -> None: ...


class _Conn(asyncio.Protocol):
    __slots__ = (
        "_buf",
        "_busy",
        "_closing",
        "_deadline",
        "_eof",
        "_handler",
        "_limit",
        "_live",
        "_loop",
        "_timeout",
        "_timer",
        "_transport",
    )

    def __init__(self, handler: Handler, limit: int, read_timeout: float, live: set[_Conn]) -> None:
        self._handler = handler
        self._live = live
        self._limit = limit
        self._buf = bytearray()
        self._busy = False
        self._transport: _Stream | None = None
        self._closing = False
        self._eof = False
        self._loop = asyncio.get_running_loop()
        self._timeout = read_timeout
        self._deadline = 0.0
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # asyncio.Protocol declares a BaseTransport (no write); a stream server's is a stream.
        self._transport = cast(_Stream, transport)
        self._live.add(self)
        self._deadline = self._loop.time() + self._timeout
        self._timer = self._loop.call_later(self._timeout, self._check_deadline)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._live.discard(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _check_deadline(self) -> None:
        # One timer per connection, re-armed only when it fires: moving the deadline on each
        # request costs a float store, not a timer.
        self._timer = None
        t = self._transport
        if t is None or self._closing:
            return
        now = self._loop.time()
        if self._busy:  # the handler has the request: reading is over until it answers
            self._timer = self._loop.call_later(self._timeout, self._check_deadline)
            return
        if now < self._deadline:
            self._timer = self._loop.call_later(self._deadline - now, self._check_deadline)
            return
        head_end = self._buf.find(b"\r\n\r\n")
        if head_end < 0:
            # Nothing, or part of the headers: no request to answer (RFC 9112 9.5).
            self._closing = True
            t.close()
            return
        got = len(self._buf) - head_end - 4
        self._write(
            json_response(
                408,
                {
                    "code": 408,
                    "message": f"the request did not arrive within the {self._timeout:g}s "
                    f"read timeout (headers complete, {got} body bytes received)",
                },
            ),
            close=True,
        )

    def retire(self) -> None:
        """Close once the request in flight, if any, is answered (the server goes away)."""
        self._eof = True
        if not self._busy and self._transport is not None:
            self._closing = True
            self._transport.close()

    def eof_received(self) -> bool:
        # A client may half-close after its request (HTTP/1.1 allows it): answer the request
        # in flight, then close; with nothing in flight, close now.
        self._eof = True
        return self._busy

    def data_received(self, data: bytes) -> None:
        if not self._buf and not self._busy:
            self._deadline = self._loop.time() + self._timeout  # a new request begins
        self._buf += data
        if not self._busy:
            self._next()

    def _next(self) -> None:
        if self._closing or self._transport is None:
            return
        try:
            req = self._parse()
        except _BodyTooLarge:
            self._write(
                json_response(
                    413,
                    {"code": 413, "message": f"request body exceeds the {self._limit} byte limit"},
                ),
                close=True,
            )
            return
        except ValueError as e:
            self._write(
                json_response(400, {"code": 400, "message": f"bad request: {e}"}), close=True
            )
            return
        if req is None:
            if len(self._buf) > 64 * 1024 and b"\r\n\r\n" not in self._buf:
                self._write(
                    json_response(400, {"code": 400, "message": "headers too large"}), close=True
                )
            return
        self._busy = True
        keep = req.headers.get("connection", "").lower() != "close"
        task = asyncio.ensure_future(self._handler(req))
        head = req.method == "HEAD"
        task.add_done_callback(lambda t: self._done(t, keep, head))

    def _done(self, task: asyncio.Task[Response], keep: bool, head: bool = False) -> None:
        self._busy = False
        if task.cancelled():
            resp = json_response(503, {"code": 503, "message": "shutting down"})
        elif isinstance(exc := task.exception(), Fatal):
            resp = unavailable(exc.reason)
        elif exc is not None:
            resp = json_response(500, {"code": 500, "message": f"internal error: {exc!r}"})
        else:
            resp = task.result()
        self._write(resp, close=not keep or self._eof, head=head)
        # The next request (or the idle wait for it) gets a full read timeout.
        self._deadline = self._loop.time() + self._timeout
        if keep and self._buf:
            self._next()

    def _write(self, resp: Response, *, close: bool, head: bool = False) -> None:
        t = self._transport
        if t is None:
            return
        reason = _REASONS.get(resp.status, "Unknown")
        length = len(resp.body) + sum(map(len, resp.parts))
        lines = [f"HTTP/1.1 {resp.status} {reason}\r\ncontent-length: {length}\r\n"]
        if resp.content_type:
            lines.append(f"content-type: {resp.content_type}\r\n")
        for k, v in resp.headers:
            lines.append(f"{k}: {v}\r\n")
        if close:
            lines.append("connection: close\r\n")
        lines.append("\r\n")
        # A response to HEAD has the headers of the GET but no body (RFC 9110, 9.3.2): a body
        # would be read as the next response on a kept-alive connection.
        t.write("".join(lines).encode("latin-1") + (b"" if head else resp.body))
        for part in () if head else resp.parts:
            t.write(part)
        if close:
            self._closing = True
            t.close()

    def _parse(self) -> Request | None:
        buf = self._buf
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            return None
        lines = bytes(buf[:end]).decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            raise ValueError(f"bad request line {lines[0][:100]!r}")
        method, target, _ = parts
        headers = _headers(lines[1:])
        pos = end + 4
        if "chunked" in headers.get("transfer-encoding", "").lower():
            body = bytearray()
            while True:
                le = buf.find(b"\r\n", pos)
                if le < 0:
                    if len(body) + len(buf) - pos > self._limit + 1024:
                        raise _BodyTooLarge
                    return None
                size = int(bytes(buf[pos:le]).split(b";", 1)[0].strip() or b"0", 16)
                if size < 0:
                    raise ValueError("negative chunk size")
                if len(body) + size > self._limit:
                    raise _BodyTooLarge
                if size == 0:
                    te = buf.find(b"\r\n\r\n", le)
                    if te < 0:
                        return None
                    pos = te + 4
                    break
                if len(buf) < le + 2 + size + 2:
                    return None
                body += buf[le + 2 : le + 2 + size]
                pos = le + 2 + size + 2
            data = bytes(body)
        else:
            length = int(headers.get("content-length", "0") or 0)
            if length < 0:
                raise ValueError("negative content-length")
            if length > self._limit:
                raise _BodyTooLarge
            if len(buf) - pos < length:
                return None
            data = bytes(buf[pos : pos + length])
            pos += length
        del buf[:pos]
        path, _, qs = target.partition("?")
        return Request(method, target, headers, data, path, dict(parse_qsl(qs)) if qs else {})


def _headers(lines: list[str]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in lines:
        k, sep, v = line.partition(":")
        if not sep:
            raise ValueError("bad header line")
        k, v = k.strip().lower(), v.strip()
        if k == "content-length" and headers.get(k, v) != v:
            raise ValueError("conflicting content-length headers")  # RFC 9112, 6.3
        headers[k] = v
    if "transfer-encoding" in headers and "content-length" in headers:
        # Two framings: a proxy in front may read the other one (request smuggling).
        raise ValueError("both transfer-encoding and content-length")
    return headers


class Listener:
    """A listening socket and the connections it accepted."""

    def __init__(self, server: asyncio.Server, connections: set[_Conn]) -> None:
        self.server = server
        self.connections = connections

    @property
    def port(self) -> int:
        return int(self.server.sockets[0].getsockname()[1])

    def close(self) -> None:
        """Stop listening, and close each connection once its request in flight is answered
        (a kept-alive client reconnects, to whatever listens on the port next)."""
        self.server.close()
        for conn in list(self.connections):
            conn.retire()


async def serve(
    handler: Handler, host: str, port: int, *, body_limit: int, read_timeout: float
) -> Listener:
    loop = asyncio.get_running_loop()
    live: set[_Conn] = set()
    server = await loop.create_server(
        lambda: _Conn(handler, body_limit, read_timeout, live),
        host,
        port,
        reuse_address=True,
        backlog=1024,
    )
    return Listener(server, live)
