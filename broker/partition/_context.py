"""The apply context: the transaction, the clock of the log record, and the collected actions.

Helpers here are the vocabulary the entry and lifecycle modules share: status rows, journal
entries, state keys, timers, and delivering a notification into an invocation's journal.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass, field

from sluice import protocol as p
from sluice.broker.schema import Registry
from sluice.broker.storage import Transaction

from . import actions as a
from ._records import Phase, Status, Timer

_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")


def key_prefix(service: str, key: str) -> bytes:
    s = service.encode()
    k = key.encode()
    return _U32.pack(len(s)) + s + _U32.pack(len(k)) + k


@dataclass(slots=True)
class RetryPolicy:
    initial_ms: int = 50
    factor: float = 2.0
    max_interval_ms: int = 10_000
    max_attempts: int = 100  # then the invocation pauses

    def delay_ms(self, attempt: int) -> int:
        return int(min(self.initial_ms * self.factor ** max(attempt - 1, 0), self.max_interval_ms))


@dataclass(slots=True)
class Config:
    partitions: int = 8
    # How many of them have a processor, tables and a log of their own (lifecycle/shuffle.py):
    # an invocation belongs to the one its partition key names, modulo this count.
    processors: int = 1
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    idempotency_retention_ms: int = 86_400_000
    workflow_retention_ms: int = 86_400_000
    # Every completed invocation stays attachable this long (restate keeps journals 1 day).
    completion_retention_ms: int = 86_400_000


class Ctx:
    __slots__ = (
        "_dirty",
        "_running",
        "_statuses",
        "actions",
        "config",
        "lsn",
        "now",
        "partition",
        "registry",
        "tx",
    )

    def __init__(
        self, tx: Transaction, registry: Registry, config: Config, partition: int = 0
    ) -> None:
        self.tx = tx
        self.registry = registry
        self.config = config
        self.partition = partition  # the processor applying (of config.processors)
        self.now = 0
        self.lsn = 0
        self.actions: list[a.Action] = []
        self._statuses: dict[bytes, Status | None] = {}
        self._dirty: set[bytes] = set()
        # Ids whose stored status is INVOKED, as far as this batch read them: the "running"
        # index changes only when that does.
        self._running: set[bytes] = set()

    def owner(self, id: bytes) -> int:
        """The partition (processor) that owns the invocation ``id``: its partition key (the
        id's first 8 bytes) modulo the processor count."""
        n = self.config.processors
        return 0 if n == 1 else int.from_bytes(id[:8], "big") % n

    # --- status --------------------------------------------------------------------------

    def status(self, id: bytes) -> Status | None:
        if id in self._statuses:
            return self._statuses[id]
        raw = self.tx.get("status", id)
        st = Status.decode(raw) if raw is not None else None
        self._statuses[id] = st
        if st is not None and st.phase == Phase.INVOKED:
            self._running.add(id)
        return st

    def put_status(self, st: Status) -> None:
        st.modified_at = self.now
        self._statuses[st.id] = st
        self._dirty.add(st.id)

    def delete_status(self, id: bytes) -> None:
        self._statuses[id] = None
        self._dirty.discard(id)
        self.tx.delete("status", id)
        if id in self._running:
            self._running.discard(id)
            self.tx.delete("running", id)

    def flush(self) -> None:
        """Encode each changed status once per batch, however often it changed, and keep
        the index of running invocations (what a restart resumes) in step with it."""
        for id in self._dirty:
            st = self._statuses[id]
            if st is None:
                continue
            self.tx.put("status", id, st.encode())
            running = st.phase == Phase.INVOKED
            if running and id not in self._running:
                self.tx.put("running", id, b"")
                self._running.add(id)
            elif not running and id in self._running:
                self.tx.delete("running", id)
                self._running.discard(id)
        self._dirty.clear()

    # --- journal -------------------------------------------------------------------------

    def append_journal(self, st: Status, frame: bytes) -> None:
        self.tx.put("journal", st.id + _U32.pack(st.journal_len), frame)
        st.journal_len += 1

    def journal(self, st: Status) -> Iterator[bytes]:
        for i in range(st.journal_len):
            raw = self.tx.get("journal", st.id + _U32.pack(i))
            if raw is not None:
                yield raw

    def delete_journal(self, st: Status) -> None:
        for i in range(st.journal_len):
            self.tx.delete("journal", st.id + _U32.pack(i))
        st.journal_len = 0

    # --- timers --------------------------------------------------------------------------

    def add_timer(self, fire_at: int, timer: Timer) -> bytes:
        key = _U64.pack(fire_at) + timer.id + _U32.pack(timer.kind) + _U32.pack(timer.completion_id)
        self.tx.put("timers", key, timer.encode())
        self.actions.append(a.RegisterTimer(fire_at, key))
        return key

    # --- notifications -------------------------------------------------------------------

    def notify(self, id: bytes, notification: p.Message) -> None:
        """Append a notification to an invocation's journal; deliver it or resume if waiting."""
        st = self.status(id)
        if st is None or st.phase == Phase.COMPLETED:
            return
        idx = getattr(notification, "signal_idx", None)
        if idx is not None and idx != p.CANCEL_SIGNAL:
            # A second resolve (a client resending one whose answer it lost, or a race
            # between resolvers) must not reach the journal: a replay would see both.
            if idx in st.signals:
                return
            st.signals.append(idx)
        frame = p.encode(notification)
        self.append_journal(st, frame)
        if st.phase == Phase.INVOKED:
            self.actions.append(a.SendToAttempt(st.id, st.epoch, frame))
        elif st.phase == Phase.SUSPENDED and wakes(st, notification):
            from .lifecycle.attempt import start_attempt

            start_attempt(self, st)
        self.put_status(st)

    def reply(
        self,
        waiter: int,
        kind: str,
        *,
        id: bytes = b"",
        value: bytes | None = None,
        code: int = 0,
        message: str = "",
    ) -> None:
        if waiter:
            self.actions.append(
                a.Reply(waiter, kind, id=id, value=value, code=code, message=message)
            )


def wakes(st: Status, n: p.Message) -> bool:
    assert isinstance(n, p.Notification)
    if n.completion_id is not None and n.completion_id in st.waiting_completions:
        return True
    if n.signal_idx is not None and (
        n.signal_idx in st.waiting_signals or n.signal_idx == p.CANCEL_SIGNAL
    ):
        return True
    return n.signal_name is not None and n.signal_name in st.waiting_names


def failure(code: int, message: str) -> p.Failure:
    return p.Failure(code=code, message=message)
