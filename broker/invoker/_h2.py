"""A lean HTTP/2 cleartext (prior knowledge) client on asyncio + h2, built for bidi streams.

One ``H2Client`` per endpoint authority keeps a few connections and opens streams on the one
with room; each stream reports to a ``StreamHandler`` (headers, data, end, reset).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import cast

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings

_WINDOW = 16 * 1024 * 1024


class StreamHandler:
    def on_headers(self, status: int, headers: dict[str, str]) -> None: ...
    def on_data(self, data: bytes) -> None: ...
    def on_end(self) -> None: ...
    def on_reset(self, reason: str) -> None: ...
    def on_refused(self) -> None:
        """The endpoint never processed the stream (GOAWAY): safe to open it again."""
        self.on_reset("the endpoint refused the stream (GOAWAY)")


def _text(headers: Iterable[tuple[bytes | str, bytes | str]]) -> dict[str, str]:
    """Response headers as text (h2 decodes them already: ``header_encoding``)."""
    return {
        (k if isinstance(k, str) else k.decode()): (v if isinstance(v, str) else v.decode())
        for k, v in headers
    }


class _Conn(asyncio.Protocol):
    def __init__(self, on_closed: Callable[[_Conn], None]) -> None:
        # Our own headers are well-formed; skipping h2's per-header validation saves CPU.
        cfg = h2.config.H2Configuration(
            client_side=True,
            header_encoding="utf-8",
            validate_outbound_headers=False,
            normalize_outbound_headers=False,
            validate_inbound_headers=False,
        )
        self.h2 = h2.connection.H2Connection(cfg)
        self.transport: asyncio.Transport | None = None
        self.streams: dict[int, StreamHandler] = {}
        self._pending: dict[int, list[tuple[bytes, bool]]] = {}
        self._on_closed = on_closed
        self.closed = False
        self.draining = False  # no new streams (GOAWAY received, or retired by us)
        self.opened = 0
        self._flush_scheduled = False
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transport is no asyncio.Transport subclass, but has its methods.
        self.transport = tr = cast(asyncio.Transport, transport)
        self.h2.local_settings = h2.settings.Settings(
            client=True,
            initial_values={
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: _WINDOW,
                h2.settings.SettingCodes.MAX_FRAME_SIZE: 1 << 20,
                h2.settings.SettingCodes.ENABLE_PUSH: 0,
            },
        )
        # Replacing local_settings skips h2's settings-ACK path, which is where it would raise
        # its own frame-size check: without this, any DATA frame over 16 KiB (a handler's
        # output over ~64 KiB, which hypercorn sends as one frame) fails the connection.
        self.h2.max_inbound_frame_size = self.h2.local_settings.max_frame_size
        self.h2.initiate_connection()
        self.h2.increment_flow_control_window(_WINDOW)
        tr.write(self.h2.data_to_send())
        if not self.ready.done():
            self.ready.set_result(None)

    def data_received(self, data: bytes) -> None:
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError as e:
            self._fail(f"HTTP/2 protocol error: {e}")
            return
        for ev in events:
            sid = getattr(ev, "stream_id", None)
            handler = self.streams.get(sid) if sid else None
            if isinstance(ev, h2.events.DataReceived):
                if ev.flow_controlled_length:
                    self.h2.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                if handler is not None:
                    handler.on_data(ev.data)
            elif isinstance(ev, h2.events.ResponseReceived):
                if handler is not None:
                    hdrs = _text(ev.headers)
                    handler.on_headers(int(hdrs.get(":status", "0")), hdrs)
            elif isinstance(ev, h2.events.StreamEnded):
                if handler is not None:
                    self._forget(ev.stream_id)
                    # The response is complete: close our half too.
                    with contextlib.suppress(h2.exceptions.H2Error):
                        self.h2.end_stream(ev.stream_id)
                    handler.on_end()
            elif isinstance(ev, h2.events.StreamReset):
                if handler is not None:
                    self._forget(ev.stream_id)
                    handler.on_reset(f"stream reset by the endpoint (code {ev.error_code})")
            elif isinstance(ev, h2.events.WindowUpdated):
                self._drain()
            elif isinstance(ev, h2.events.ConnectionTerminated):
                if ev.error_code != 0:
                    self._fail(f"the endpoint closed the HTTP/2 connection (code {ev.error_code})")
                    return
                # Graceful GOAWAY (hypercorn sends one every ~1,000 streams): streams up to
                # last_stream_id still complete; later ones were never seen, so fail them.
                self.draining = True
                last = ev.last_stream_id or 0
                for sid in [s for s in self.streams if s > last]:
                    handler = self.streams.pop(sid)
                    handler.on_refused()
                self._on_closed(self)
        self.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        # Mid-stream, this is what a handler process that died (or was killed) looks like.
        why = f": {exc}" if exc else ""
        self._fail(f"connection to the deployment lost mid-stream (did the handler die?){why}")

    def _fail(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(reason))
        streams, self.streams = self.streams, {}
        for handler in streams.values():
            handler.on_reset(reason)
        if self.transport is not None:
            self.transport.close()
        self._on_closed(self)

    def _forget(self, sid: int) -> None:
        self.streams.pop(sid, None)
        self._pending.pop(sid, None)
        if self.draining and not self.streams and self.transport is not None:
            self.transport.close()

    def flush(self) -> None:
        # Coalesce: every stream opened or fed in this loop turn leaves in one write.
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush_now)

    def _flush_now(self) -> None:
        self._flush_scheduled = False
        data = self.h2.data_to_send()
        # A flush scheduled before the connection was closed (drained, or lost) has nowhere
        # to go: its streams fail through connection_lost.
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    @property
    def room(self) -> int:
        limit = self.h2.remote_settings.max_concurrent_streams
        if len(self.streams) < limit - 16:
            return limit - len(self.streams)
        # h2 still counts streams we are done with until both sides closed them.
        return int(limit - self.h2.open_outbound_streams)

    def open(
        self, headers: list[tuple[str, str]], handler: StreamHandler, body: bytes, end: bool
    ) -> int:
        sid = self.h2.get_next_available_stream_id()
        self.opened += 1
        self.h2.send_headers(sid, headers, end_stream=end and not body)
        self.streams[sid] = handler
        if body:
            self.send(sid, body, end)
        else:
            self.flush()
        return sid

    def send(self, sid: int, data: bytes, end: bool = False) -> None:
        if sid not in self.streams:
            return
        queue = self._pending.get(sid)
        if queue is not None:
            queue.append((data, end))
            return
        self._send_now(sid, data, end)
        self.flush()

    def _send_now(self, sid: int, data: bytes, end: bool) -> None:
        h = self.h2
        view = memoryview(data)
        while view:
            window = min(h.local_flow_control_window(sid), h.max_outbound_frame_size)
            if window <= 0:
                self._pending.setdefault(sid, []).append((bytes(view), end))
                return
            chunk = view[:window]
            view = view[window:]
            h.send_data(sid, chunk.tobytes(), end_stream=end and not view)
        if end and not data:
            h.end_stream(sid)

    def _drain(self) -> None:
        for sid in list(self._pending):
            queue = self._pending.pop(sid)
            while queue:
                data, end = queue.pop(0)
                self._send_now(sid, data, end)
                if sid in self._pending:  # blocked again: keep the rest in order
                    self._pending[sid].extend(queue)
                    break

    def end(self, sid: int) -> None:
        if sid not in self.streams:
            return
        if sid in self._pending:
            self._pending[sid].append((b"", True))
            return
        try:
            self.h2.end_stream(sid)
        except h2.exceptions.H2Error:
            return
        self.flush()

    def reset(self, sid: int) -> None:
        if sid not in self.streams:
            return
        with contextlib.suppress(h2.exceptions.H2Error):
            self.h2.reset_stream(sid, error_code=8)  # CANCEL
        self.flush()
        self._forget(sid)


class H2Client:
    """Connections to one authority (host:port); streams go to whichever has room."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.authority = f"{host}:{port}"
        self._conns: list[_Conn] = []
        self._connecting: asyncio.Task[_Conn] | None = None
        self.max_connections = 8
        self.streams_per_connection = 16
        self.lifetime_streams = 900
        self.hard_limit = 64  # per connection, well below the endpoint's concurrent-stream cap

    async def _conn(self) -> _Conn:
        # Spread streams over a few connections (the endpoint serves each on its own task).
        while True:
            best = None
            for c in list(self._conns):
                if c.opened >= self.lifetime_streams and not c.draining:
                    # hypercorn closes a connection after 1,000 requests, and a stream opened
                    # in the race with its GOAWAY kills the whole connection: retire it first.
                    c.draining = True
                    self._conns.remove(c)
                    if not c.streams and c.transport is not None:
                        c.transport.close()
                    continue
                if (
                    not c.closed
                    and not c.draining
                    and (best is None or len(c.streams) < len(best.streams))
                ):
                    best = c
            if best is not None:
                load = len(best.streams)
                if load < self.streams_per_connection:
                    return best
                if (
                    len(self._conns) >= self.max_connections
                    and load < self.hard_limit
                    and best.room > 0
                ):
                    return best
            if self._connecting is None:
                self._connecting = asyncio.ensure_future(self._connect())
            task = self._connecting
            try:
                await asyncio.shield(task)
            finally:
                if self._connecting is task and task.done():
                    self._connecting = None
            # Loop: every waiter chooses again, so they do not all pile onto the new one.

    async def _connect(self) -> _Conn:
        loop = asyncio.get_running_loop()
        _, proto = await loop.create_connection(lambda: _Conn(self._closed), self.host, self.port)
        await proto.ready
        self._conns.append(proto)
        return proto

    def _closed(self, conn: _Conn) -> None:
        if conn in self._conns:
            self._conns.remove(conn)

    async def open(
        self,
        method: str,
        path: str,
        headers: list[tuple[str, str]],
        handler: StreamHandler,
        body: bytes = b"",
        end: bool = False,
    ) -> tuple[_Conn, int]:
        conn = await self._conn()
        all_headers = [
            (":method", method),
            (":scheme", "http"),
            (":authority", self.authority),
            (":path", path),
            *headers,
        ]
        return conn, conn.open(all_headers, handler, body, end)

    def close(self) -> None:
        for c in list(self._conns):
            if c.transport is not None:
                c.transport.close()
        self._conns.clear()


@dataclass
class H2Response:
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    body: bytearray = field(default_factory=bytearray)
    error: str | None = None


class _Collect(StreamHandler):
    def __init__(self) -> None:
        self.resp = H2Response()
        self.done: asyncio.Future[H2Response] = asyncio.get_running_loop().create_future()

    def on_headers(self, status: int, headers: dict[str, str]) -> None:
        self.resp.status = status
        self.resp.headers = headers

    def on_data(self, data: bytes) -> None:
        self.resp.body += data

    def on_end(self) -> None:
        if not self.done.done():
            self.done.set_result(self.resp)

    def on_reset(self, reason: str) -> None:
        if not self.done.done():
            self.done.set_exception(ConnectionError(reason))


async def h2_request(
    client: H2Client, method: str, path: str, headers: list[tuple[str, str]], body: bytes = b""
) -> H2Response:
    """A plain request/response over the client (used by discovery)."""
    c = _Collect()
    await client.open(method, path, headers, c, body, end=True)
    return await c.done
