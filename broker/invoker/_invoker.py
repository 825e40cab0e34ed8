"""Attempts: one stream per (invocation, epoch). What the handler sends goes to the log as
``Effects`` tagged with the epoch, so a stream left over from an earlier attempt cannot append
anything (the state machine drops effects whose epoch is not the current one)."""

from __future__ import annotations

import asyncio
import collections
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from sluice import protocol as p
from sluice.broker.partition._records import Effects
from sluice.broker.partition.actions import AbortAttempt, SendToAttempt, StartAttempt
from sluice.broker.schema import Registry

from ._h2 import H2Client, StreamHandler, _Conn
from ._http1 import Http1Pool

_HEAD = struct.Struct(">HHI")
_TERMINAL = (0x0001, 0x0002, 0x0003)  # Suspension, Error, End
_CUSTOM_ENTRY = 0xFC00  # type codes with these bits set are custom entries, kept as bytes
_MAX_FRAME = 64 * 1024 * 1024


@dataclass(slots=True)
class InvokerOptions:
    inactivity_timeout: float = 60.0  # then ask the handler to suspend (close our half)
    abort_timeout: float = 60.0  # then reset the stream and retry
    max_concurrent: int = 0  # attempts streaming at once; more wait in FIFO order (0: no limit)


class MalformedFrame(ValueError):
    """The handler sent bytes that are not service-protocol frames."""


def split_frames(buf: bytearray) -> tuple[bytes, bool]:
    """Cut the complete frames off the front of buf; return them and whether one is terminal.

    Raises MalformedFrame at a header no handler can send (an unknown type, an absurd
    length): waiting for the rest of such a "frame" would hang the attempt until it times out.
    """
    pos = 0
    terminal = False
    n = len(buf)
    while n - pos >= 8:
        ty, _, length = _HEAD.unpack_from(buf, pos)
        if ty not in p.MESSAGE_TYPES and ty & _CUSTOM_ENTRY != _CUSTOM_ENTRY:
            raise MalformedFrame(
                f"malformed frame: unknown message type 0x{ty:04x} at byte {pos} "
                f"(starts {bytes(buf[pos : pos + 16])!r})"
            )
        if length > _MAX_FRAME:
            raise MalformedFrame(
                f"malformed frame: a {length} byte message exceeds the {_MAX_FRAME} byte limit"
            )
        end = pos + 8 + length
        if end > n:
            break
        if ty in _TERMINAL:
            terminal = True
            pos = end
            break
        pos = end
    out = bytes(buf[:pos])
    del buf[:pos]
    return out, terminal


def version_mismatch(version: int, content_type: str) -> str:
    """Why a 200 answer's content-type is not the protocol version the deployment advertised
    (the frames of another version would be misread), or "" if it is."""
    if p.parse_content_type(content_type) == version:
        return ""
    return (
        f"unsupported protocol version: the deployment advertised service protocol v{version} "
        f"but answered with content-type {content_type!r}"
    )


class _Attempt(StreamHandler):
    __slots__ = (
        "bidi",
        "buf",
        "conn",
        "epoch",
        "error_body",
        "finished",
        "half_closed_at",
        "id",
        "invoker",
        "last_activity",
        "reopen",
        "sent",
        "service",
        "sid",
        "slot",
        "status",
        "task",
        "version",
    )

    def __init__(self, invoker: Invoker, id: bytes, epoch: int) -> None:
        self.invoker = invoker
        self.id = id
        self.epoch = epoch
        self.buf = bytearray()
        self.conn: _Conn | None = None
        self.sid = 0
        self.status = 0
        self.error_body = bytearray()
        self.finished = False
        self.last_activity = time.monotonic()
        self.half_closed_at = 0.0
        self.task: asyncio.Task[None] | None = None
        self.bidi = False
        self.reopen: Callable[[], None] | None = None
        self.sent: list[bytes] = []  # notifications sent before the endpoint answered
        self.service = ""
        self.slot = False  # holds one of the invoker's concurrency slots
        self.version = 0  # the protocol version the deployment advertised

    # --- h2 stream events ---
    def on_headers(self, status: int, headers: dict[str, str]) -> None:
        self.status = status
        self.reopen = None  # the endpoint has seen it: never resend
        self.sent = []
        self.last_activity = time.monotonic()
        if status == 200:
            wrong = version_mismatch(self.version, headers.get("content-type", ""))
            if wrong:
                self.give_up(wrong)

    def on_data(self, data: bytes) -> None:
        if self.finished:
            return
        self.last_activity = time.monotonic()
        if self.status != 200:
            self.error_body += data
            return
        self.buf += data
        try:
            frames, terminal = split_frames(self.buf)
        except MalformedFrame as e:
            self.give_up(str(e))
            return
        if frames:
            self.invoker._submit(Effects(id=self.id, epoch=self.epoch, frames=frames))
        if terminal:
            self._done()
            if self.conn is not None:
                # The handler said its last word; closing our half lets the endpoint end the
                # response, and the stream is gone on both sides.
                self.conn.end(self.sid)

    def on_refused(self) -> None:
        if not self.finished and self.reopen is not None:
            self.conn = None
            self.reopen()
        else:
            self.on_reset("the endpoint refused the stream")

    def on_end(self) -> None:
        if self.finished:
            return
        if self.buf and self.status == 200:
            why = f"malformed frame: the stream ended inside a frame ({len(self.buf)} bytes)"
            self.fail(why, 571)
        else:
            self.fail(self._why("the handler closed the stream without End, Suspension or Error"))

    def on_reset(self, reason: str) -> None:
        if not self.finished:
            self.fail(self._why(reason))

    def _why(self, default: str) -> str:
        if self.status and self.status != 200:
            text = bytes(self.error_body[:500]).decode("utf-8", "replace")
            return f"the handler answered HTTP {self.status}: {text}".strip()
        return default

    def fail(self, message: str, code: int = 503) -> None:
        if self.finished:
            return
        self._done()
        self.invoker._submit(
            Effects(
                id=self.id,
                epoch=self.epoch,
                transport_failure=p.Failure(code=code, message=message),
            )
        )

    def give_up(self, message: str) -> None:
        """A protocol violation: fail the attempt and reset its stream, which the endpoint
        would otherwise keep open (the state machine's abort finds no attempt to stop)."""
        self.fail(message, code=571)
        if self.conn is not None:
            self.conn.reset(self.sid)

    def _done(self) -> None:
        self.finished = True
        inv = self.invoker
        if inv._active.get(self.id) is self:
            del inv._active[self.id]
        if self.slot:
            self.slot = False
            inv._running -= 1
            inv._next()

    def abort(self) -> None:
        self._done()
        if self.conn is not None:
            self.conn.reset(self.sid)
        if self.task is not None:
            self.task.cancel()


class Invoker:
    def __init__(
        self,
        registry: Registry,
        submit: Callable[[Effects], None],
        options: InvokerOptions | None = None,
    ) -> None:
        self._registry = registry
        self._submit = submit
        self._options = options or InvokerOptions()
        self._active: dict[bytes, _Attempt] = {}
        self._running = 0
        self._waiting: collections.deque[StartAttempt] = collections.deque()
        self._queued: dict[bytes, StartAttempt] = {}
        self._h2: dict[tuple[str, int], H2Client] = {}
        self._h1: dict[tuple[str, int], Http1Pool] = {}
        self._sweeper: asyncio.Task[None] | None = None

    def start_sweeper(self) -> None:
        self._sweeper = asyncio.ensure_future(self._sweep())

    async def _sweep(self) -> None:
        opts = self._options
        while True:
            await asyncio.sleep(min(1.0, opts.inactivity_timeout / 4))
            now = time.monotonic()
            for att in list(self._active.values()):
                if att.conn is None:
                    continue
                svc = self._registry.services.get(att.service)
                inactivity = opts.inactivity_timeout
                abort = opts.abort_timeout
                if svc is not None:  # the endpoint's manifest may set its own (v3+)
                    inactivity = (svc.inactivity_timeout_ms or inactivity * 1000) / 1000
                    abort = (svc.abort_timeout_ms or abort * 1000) / 1000
                if not att.half_closed_at and now - att.last_activity > inactivity:
                    att.half_closed_at = now  # ask the handler to suspend
                    att.conn.end(att.sid)
                elif att.half_closed_at and now - att.half_closed_at > abort:
                    att.conn.reset(att.sid)
                    att.fail(
                        f"inactivity timeout: the handler sent nothing for {inactivity:g}s, "
                        f"then did not suspend within the {abort:g}s abort timeout"
                    )

    @property
    def load(self) -> int:
        """Attempts streaming or waiting for a concurrency slot."""
        return len(self._active) + len(self._queued)

    # --- actions -------------------------------------------------------------------------

    def start(self, action: StartAttempt) -> None:
        old = self._active.get(action.id)
        if old is not None:
            old.abort()
        limit = self._options.max_concurrent
        if limit and self._running >= limit:
            self._queued[action.id] = action  # a later start for the id replaces it
            self._waiting.append(action)
            return
        self._queued.pop(action.id, None)
        self._launch(action)

    def _next(self) -> None:
        limit = self._options.max_concurrent
        while self._waiting and (not limit or self._running < limit):
            action = self._waiting.popleft()
            if self._queued.get(action.id) is action:
                del self._queued[action.id]
                self._launch(action)

    def _launch(self, action: StartAttempt) -> None:
        att = _Attempt(self, action.id, action.epoch)
        att.slot = True
        self._running += 1
        att.service = action.service
        self._active[action.id] = att
        dep = self._registry.deployments.get(action.deployment_id)
        if dep is None:
            att.fail(f"no deployment serves service '{action.service}'", code=404)
            return
        url = urlsplit(dep.uri)
        host = url.hostname or "127.0.0.1"
        port = url.port or 80
        path = f"{url.path.rstrip('/')}/invoke/{action.service}/{action.handler}"
        att.version = dep.protocol_version
        ctype = p.content_type(dep.protocol_version)
        headers = [("content-type", ctype), ("accept", ctype), *dep.headers.items()]
        if dep.use_http_11:
            pool = self._h1.get((host, port))
            if pool is None:
                pool = self._h1[(host, port)] = Http1Pool(host, port)
            att.task = asyncio.ensure_future(
                self._request_response(att, pool, path, headers, action.frames)
            )
        else:
            client = self._h2.get((host, port))
            if client is None:
                client = self._h2[(host, port)] = H2Client(host, port)
            bidi = dep.protocol_mode != "REQUEST_RESPONSE"
            att.bidi = bidi

            def reopen(
                att: _Attempt = att, client: H2Client = client, frames: bytes = action.frames
            ) -> None:
                body = frames + b"".join(att.sent)
                att.task = asyncio.ensure_future(
                    self._open_h2(att, client, path, headers, body, bidi)
                )

            att.reopen = reopen
            reopen()

    async def _open_h2(
        self,
        att: _Attempt,
        client: H2Client,
        path: str,
        headers: list[tuple[str, str]],
        body: bytes,
        bidi: bool,
    ) -> None:
        try:
            conn, sid = await client.open("POST", path, headers, att, body, end=not bidi)
        except (OSError, ConnectionError) as e:
            att.fail(f"cannot reach the deployment: {e}")
            return
        except Exception as e:  # h2 state errors: treat as a transport failure and retry
            att.fail(f"HTTP/2 error: {e!r}")
            return
        att.task = None
        if att.finished:
            conn.reset(sid)
            return
        att.conn = conn
        att.sid = sid

    async def _request_response(
        self, att: _Attempt, pool: Http1Pool, path: str, headers: list[tuple[str, str]], body: bytes
    ) -> None:
        # Request/response has no stream to half-close: the whole exchange gets both timeouts.
        limit = self._options.inactivity_timeout + self._options.abort_timeout
        try:
            status, rheaders, data = await asyncio.wait_for(
                pool.request("POST", path, headers, body), limit
            )
        except TimeoutError:
            att.fail(
                f"inactivity timeout: the handler did not answer within {limit:g}s "
                "(inactivity plus abort timeout)"
            )
            return
        except (OSError, ConnectionError, asyncio.IncompleteReadError, ValueError) as e:
            att.fail(f"cannot reach the deployment: {e}")
            return
        if att.finished:
            return
        if status != 200:
            att.fail(f"the handler answered HTTP {status}: {data[:500].decode('utf-8', 'replace')}")
            return
        wrong = version_mismatch(att.version, rheaders.get("content-type", ""))
        if wrong:
            att.fail(wrong, code=571)
            return
        buf = bytearray(data)
        try:
            frames, terminal = split_frames(buf)
        except MalformedFrame as e:
            att.fail(str(e), code=571)
            return
        att._done()
        failure = None
        if not terminal and buf:
            failure = p.Failure(
                code=571,
                message=f"malformed frame: the response ended inside a frame ({len(buf)} bytes)",
            )
        elif not terminal:
            failure = p.Failure(
                code=503, message="the response ended without End, Suspension or Error"
            )
        self._submit(Effects(id=att.id, epoch=att.epoch, frames=frames, transport_failure=failure))

    def send(self, action: SendToAttempt) -> None:
        queued = self._queued.get(action.id)
        if queued is not None and queued.epoch == action.epoch:
            queued.frames += action.frame  # not streaming yet: goes with the journal
            return
        att = self._active.get(action.id)
        if att is None or att.epoch != action.epoch or att.conn is None:
            if (
                att is not None
                and att.bidi
                and att.epoch == action.epoch
                and att.task is not None
                and not att.task.done()
            ):
                # The stream is still opening: send once it is open.
                att.task.add_done_callback(lambda _: self.send(action))
            return
        if att.reopen is not None:
            att.sent.append(action.frame)
        att.conn.send(att.sid, action.frame)

    def abort(self, action: AbortAttempt) -> None:
        queued = self._queued.get(action.id)
        if queued is not None and queued.epoch <= action.epoch:
            del self._queued[action.id]
        att = self._active.get(action.id)
        if att is not None and att.epoch <= action.epoch:
            att.abort()

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        for att in list(self._active.values()):
            att.abort()
        for c in self._h2.values():
            c.close()
        for pool in self._h1.values():
            pool.close()
