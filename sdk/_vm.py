"""One invocation's journal: replay, new commands, notifications, suspension.

The broker sends `StartMessage`, then `known_entries` journal entries (commands and
notifications, interleaved), then, in bidirectional mode, new notifications as they happen.
The handler re-runs from the top: each command it issues is checked against the journal at
the same index (replay) or sent to the broker (processing).

Notifications are consumed lazily and strictly in arrival order, and only as far as the
current await needs: that makes combinators such as `select` and `wait_completed`
deterministic, because a replay sees exactly the results the first run had seen at the
same await.

    journal: [Input][Set][Call]...[Run] | new commands -->
              ^ replay commands           ^ processing
    notifications: n1 n2 n3 | n4 (live) ...
                   ^ consumed up to the point an await was satisfied
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import struct
import time
import traceback
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from . import protocol as p
from ._errors import (
    JOURNAL_MISMATCH,
    PROTOCOL_VIOLATION,
    CancelledError,
    ProtocolError,
    SuspendedError,
    TerminalError,
)

# A leaf of an await: ("c", completion id), ("s", signal index) or ("n", signal name).
Leaf = tuple[str, Any]

# Which fields of each command must equal the journal's on replay. Fields left out are
# computed from the clock (sleep wake-up, delayed send) or are results the broker filled in.
_COMPARED: dict[type, tuple[str, ...]] = {
    p.InputCommand: (),
    p.OutputCommand: (),
    p.GetLazyStateCommand: ("key", "result_completion_id"),
    p.SetStateCommand: ("key", "value"),
    p.ClearStateCommand: ("key",),
    p.ClearAllStateCommand: (),
    p.GetLazyStateKeysCommand: ("result_completion_id",),
    p.GetEagerStateCommand: ("key",),
    p.GetEagerStateKeysCommand: (),
    p.GetPromiseCommand: ("key", "result_completion_id"),
    p.PeekPromiseCommand: ("key", "result_completion_id"),
    p.CompletePromiseCommand: (
        "key",
        "completion_value",
        "completion_failure",
        "result_completion_id",
    ),
    p.SleepCommand: ("result_completion_id", "name"),
    p.CallCommand: (
        "service_name",
        "handler_name",
        "key",
        "parameter",
        "idempotency_key",
        "invocation_id_notification_idx",
        "result_completion_id",
    ),
    p.OneWayCallCommand: (
        "service_name",
        "handler_name",
        "key",
        "parameter",
        "idempotency_key",
        "invocation_id_notification_idx",
    ),
    p.SendSignalCommand: ("target_invocation_id", "idx", "signal_name", "void", "value", "failure"),
    p.RunCommand: ("result_completion_id", "name"),
    p.AttachInvocationCommand: (
        "invocation_id",
        "idempotent_request_target",
        "workflow_target",
        "result_completion_id",
    ),
    p.GetInvocationOutputCommand: (
        "invocation_id",
        "idempotent_request_target",
        "workflow_target",
        "result_completion_id",
    ),
    p.CompleteAwakeableCommand: ("awakeable_id", "value", "failure"),
}
# Eager and lazy reads of the same thing are interchangeable on replay: which one was used
# depends on the state the broker shipped, not on the handler.
_STATE_READS = (p.GetEagerStateCommand, p.GetLazyStateCommand)
_KEYS_READS = (p.GetEagerStateKeysCommand, p.GetLazyStateKeysCommand)


def _describe(msg: p.Message) -> str:
    fields = []
    for row in msg._schema:
        value = getattr(msg, row[1])
        if value in (None, b"", "", 0, False, []):
            continue
        if isinstance(value, bytes) and len(value) > 40:
            value = value[:40] + b"..."
        fields.append(f"{row[1]}={value!r}")
    return f"{type(msg).__name__}({', '.join(fields)})"


class Invocation:
    """The journal state machine of one invocation attempt.

    `feed` and `close_input` take what the broker sends; the context calls `command`,
    `wait` and friends; `flush` hands encoded frames to the transport.
    """

    def __init__(
        self,
        *,
        service: str,
        handler: str,
        version: int,
        always_replay: bool,
        flush: Callable[[bytes], Awaitable[None]],
    ) -> None:
        self.service = service
        self.handler = handler
        self.version = version
        self.always_replay = always_replay
        self._flush_cb = flush
        self._decoder = p.FrameDecoder()
        self._out = bytearray()

        self.start: p.StartMessage | None = None
        self._known = -1  # journal entries still to receive before the replay is complete
        self._replay: list[p.Message] = []
        self._queue: deque[p.Notification] = deque()
        self._queued_completions: set[int] = set()
        self._results: dict[Leaf, p.Notification] = {}
        self._arrival: dict[Leaf, int] = {}
        self._consumed = 0
        self._cancel_pending = False
        self._cancel_seen = False

        self.command_index = 0
        self._next_completion = 1
        self._next_signal = p.FIRST_AWAKEABLE_SIGNAL
        self.processing = False
        self.state: dict[bytes, bytes | None] = {}
        self.partial_state = True

        self.input_closed = False
        self.input_error: ProtocolError | None = None
        self._ready = asyncio.Event()
        self._input = asyncio.Event()
        self.done = False

    # --- input ---------------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        for frame in self._decoder.feed(data):
            self._on_frame(frame)

    def _on_frame(self, frame: p.Frame) -> None:
        msg = frame.message
        if self.start is None:
            if not isinstance(msg, p.StartMessage):
                raise ProtocolError(
                    f"expected StartMessage first, got message type 0x{frame.type:04x}"
                )
            self.start = msg
            self._known = msg.known_entries
            self.state = {e.key: e.value for e in msg.state_map}
            self.partial_state = msg.partial_state
        elif isinstance(msg, p.Notification):
            self._queue.append(msg)
            if msg.completion_id is not None:
                self._queued_completions.add(msg.completion_id)
            if self._known > 0:
                self._known -= 1
        elif p.is_command(frame.type) or msg is None:
            if self._known <= 0:
                raise ProtocolError(
                    f"unexpected command {_describe(msg) if msg else hex(frame.type)} "
                    "after the replay"
                )
            self._replay.append(msg if msg is not None else p.EndMessage())
            self._known -= 1
        elif isinstance(msg, p.CommandAckMessage):
            return
        else:
            raise ProtocolError(f"unexpected message {type(msg).__name__} from the broker")
        if self._known == 0:
            self._ready.set()
        self._input.set()

    def close_input(self) -> None:
        self.input_closed = True
        if self._decoder.pending and self.input_error is None:
            self.input_error = ProtocolError("the request body ended inside a message")
        self._input.set()

    async def ready(self) -> p.InputCommand:
        """Wait for the start message and the whole known journal; return the input."""
        while not self._ready.is_set():
            if self.input_error is not None:
                raise self.input_error
            if self.input_closed:
                raise ProtocolError("the request body ended before the journal was complete")
            self._input.clear()
            await self._input.wait()
        if not self._replay or not isinstance(self._replay[0], p.InputCommand):
            raise ProtocolError("the journal does not start with an InputCommand")
        self.command_index = 1
        return self._replay[0]

    @property
    def invocation_id(self) -> str:
        return self.start.debug_id if self.start else ""

    @property
    def key(self) -> str:
        return self.start.key if self.start else ""

    def random_seed(self) -> int:
        assert self.start is not None
        if self.version >= 6 and self.start.random_seed:
            return self.start.random_seed
        return int.from_bytes(hashlib.sha256(self.start.id).digest()[:8], "big")

    # --- commands ------------------------------------------------------------------------

    def command(self, msg: p.Message) -> p.Message:
        """Journal a command: check it against the replayed journal, or send it."""
        if self.done:
            raise SuspendedError()
        index = self.command_index
        self.command_index += 1
        if index < len(self._replay):
            old = self._replay[index]
            if not self._matches(old, msg):
                self._mismatch(index, old, msg)
            return old
        self.processing = True
        self._out += p.encode(msg)
        return msg

    def peek_replayed(self) -> p.Message | None:
        """The journal's command at the next index, if the handler is still replaying."""
        if self.command_index < len(self._replay):
            return self._replay[self.command_index]
        return None

    def _matches(self, old: p.Message, new: p.Message) -> bool:
        if type(old) is not type(new):
            return (
                isinstance(old, _STATE_READS)
                and isinstance(new, _STATE_READS)
                and old.key == new.key
            ) or (isinstance(old, _KEYS_READS) and isinstance(new, _KEYS_READS))
        return all(getattr(old, f) == getattr(new, f) for f in _COMPARED.get(type(new), ()))

    def _mismatch(self, index: int, old: p.Message, new: p.Message) -> None:
        self._protocol_failure(
            ProtocolError(
                f"Journal mismatch in handler {self.service}/{self.handler} "
                f"at command index {index}: "
                f"the journal has {_describe(old)} but the handler issued {_describe(new)}. "
                "The handler's code changed, or it is not deterministic: use ctx.run, ctx.random, "
                "ctx.uuid and ctx.time for anything that can differ between attempts.",
                JOURNAL_MISMATCH,
                command_index=index,
            )
        )

    def send_raw(self, msg: p.Message) -> None:
        """A control message (run proposal) that is not a journal command."""
        self._out += p.encode(msg)

    def next_completion(self) -> int:
        cid = self._next_completion
        self._next_completion += 1
        return cid

    def next_signal(self) -> int:
        idx = self._next_signal
        self._next_signal += 1
        return idx

    def awakeable_id(self, signal_idx: int) -> str:
        assert self.start is not None
        raw = self.start.id + struct.pack(">I", signal_idx)
        # "sign_1": a signal-based awakeable (protocol v5+); "prom_1" named the old,
        # completion-based kind, which restate-server would look up in the journal.
        return "sign_1" + base64.urlsafe_b64encode(raw).decode().rstrip("=")

    def has_completion(self, cid: int) -> bool:
        return ("c", cid) in self._results or cid in self._queued_completions

    # --- awaiting ------------------------------------------------------------------------

    def result(self, leaf: Leaf) -> p.Notification | None:
        return self._results.get(leaf)

    def arrival(self, leaf: Leaf) -> int:
        return self._arrival.get(leaf, 1 << 62)

    async def wait(self, leaves: Iterable[Leaf], done: Callable[[], bool]) -> None:
        """Consume notifications in order until `done()` holds; suspend if none can come."""
        leaves = list(leaves)
        while not done():
            if self._cancel_pending:
                self._cancel_pending = False
                raise CancelledError()
            if self._queue:
                self._consume()
                continue
            if self.input_error is not None:
                raise self.input_error
            if self.done:
                raise SuspendedError()
            if self.input_closed or (self.always_replay and self.processing):
                await self._suspend(leaves)
            await self.flush()
            self._input.clear()
            await self._input.wait()

    def _consume(self) -> None:
        n = self._queue.popleft()
        if n.completion_id is not None:
            leaf: Leaf = ("c", n.completion_id)
            self._queued_completions.discard(n.completion_id)
        elif n.signal_idx is not None:
            if n.signal_idx == p.CANCEL_SIGNAL:
                if not self._cancel_seen:
                    self._cancel_seen = True
                    self._cancel_pending = True
                return
            leaf = ("s", n.signal_idx)
        elif n.signal_name is not None:
            leaf = ("n", n.signal_name)
        else:
            return
        self._consumed += 1
        self._results[leaf] = n
        self._arrival[leaf] = self._consumed

    async def _suspend(self, leaves: list[Leaf]) -> None:
        waiting = [leaf for leaf in leaves if leaf not in self._results]
        msg = p.SuspensionMessage(
            waiting_completions=sorted({v for k, v in waiting if k == "c"}),
            waiting_signals=sorted({v for k, v in waiting if k == "s"}),
            waiting_named_signals=sorted({v for k, v in waiting if k == "n"}),
        )
        if not self._cancel_seen:
            msg.waiting_signals = sorted({*msg.waiting_signals, p.CANCEL_SIGNAL})
        self._out += p.encode(msg)
        self.done = True
        await self.flush()
        raise SuspendedError()

    # --- ending --------------------------------------------------------------------------

    async def end(self, output: p.OutputCommand) -> None:
        if self.done:
            return
        self.command(output)
        if not self.done:
            self._out += p.encode(p.EndMessage())
            self.done = True
        await self.flush()

    async def fail(self, exc: BaseException) -> None:
        """End the attempt with an ErrorMessage: the broker retries it."""
        if self.done:
            return
        if isinstance(exc, ProtocolError):
            self._protocol_failure(exc)
        else:
            self._out += p.encode(
                p.ErrorMessage(
                    code=500,
                    message=f"{type(exc).__name__}: {exc}",
                    stacktrace="".join(traceback.format_exception(exc)),
                    related_command_index=max(self.command_index - 1, 0),
                )
            )
            self.done = True
        await self.flush()

    def _protocol_failure(self, exc: ProtocolError) -> None:
        if self.done:
            return
        self._out += p.encode(
            p.ErrorMessage(
                code=exc.code,
                message=exc.message,
                related_command_index=exc.command_index,
            )
        )
        self.done = True
        raise SuspendedError()

    async def flush(self) -> None:
        if self._out:
            data = bytes(self._out)
            self._out.clear()
            await self._flush_cb(data)

    def now_ms(self) -> int:
        return int(time.time() * 1000)


def failure_error(failure: p.Failure) -> TerminalError:
    if failure.code == 409:
        return CancelledError(failure.message or "cancelled")
    return TerminalError(failure.message, failure.code)


__all__ = ["JOURNAL_MISMATCH", "PROTOCOL_VIOLATION", "Invocation", "Leaf", "failure_error"]
