"""The processor: read from the log, apply, commit one batch, then act.

ingress / invoker / timers ──append──► log ──durable batch──► apply (state machine)
                                                                │ one write batch
                                                                ▼ (tables + applied lsn)
                                                             commit ──► actions
"""

from __future__ import annotations

import logging
import struct
import time
from collections.abc import Callable

from sluice import protocol as p
from sluice.broker.errors import Fatal
from sluice.broker.ids import Lsn
from sluice.broker.log import Log, LogCorrupted, Record
from sluice.broker.storage import Store, Transaction

from . import actions as a
from ._context import Config, Ctx
from ._records import (
    AnnounceLeader,
    KafkaIngest,
    Leadership,
    Manage,
    Phase,
    Proposal,
    Status,
    Terminate,
    decode_command,
    encode_command,
)
from .lifecycle import leadership
from .lifecycle.poison import unappliable_ingest
from .state_machine import StateMachine

_U64 = struct.Struct(">Q")
APPLIED = b"applied_lsn"
RUNNING_INDEXED = b"running_indexed"  # the "running" table is complete (see _index_running)
log = logging.getLogger("sluice.processor")


class Processor:
    def __init__(
        self,
        log: Log,
        store: Store,
        sm: StateMachine,
        act: Callable[[list[a.Action]], None],
        *,
        on_failed: Callable[[Fatal], None] | None = None,
        node: str = "",
        address: str = "",
        index: int = 0,
    ) -> None:
        self.log = log
        self.index = index  # which partition (of the config's processors) this one applies
        self.node, self.address = node, address
        self.epoch = 0  # the leader epoch this processor proposes under (0: not leading)
        self._seq = 0
        self.store = store
        self.sm = sm
        self._act = act
        self._failed = on_failed  # the log or the tables failed (see broker/errors.py)
        self.applied = Lsn(0)

    @property
    def config(self) -> Config:
        return self.sm.config

    def submit(self, cmd: p.Message) -> None:
        """Append a command; it is applied (and acted upon) once durable."""
        self.log.append(encode_command(cmd), int(time.time() * 1000))

    def propose(self, cmd: p.Message) -> None:
        """Append this leader's own command (an attempt's effects, a timer firing, a restart),
        stamped with its epoch and the next sequence number (lifecycle/leadership.py)."""
        self._seq += 1
        stamped = Proposal(epoch=self.epoch, seq=self._seq, command=encode_command(cmd))
        self.log.append(encode_command(stamped), int(time.time() * 1000))

    def _lead(self) -> None:
        """Announce this node as the leader with the next epoch; what it proposes from now on
        comes after the announcement in the log, so it is applied under it."""
        raw = self.store.get("meta", leadership.KEY)
        epoch = (Leadership.decode(raw).epoch if raw is not None else 0) + 1
        self.submit(AnnounceLeader(epoch=epoch, node=self.node, address=self.address))
        self.epoch, self._seq = epoch, 0

    def recover(self) -> list[a.Action]:
        """Load derived state, replay the log past the applied position, and return the
        actions that restart in-flight work (attempts, timers)."""
        self.sm.load(self.store.scan("schema", b""))
        self._index_running()
        raw = self.store.get("meta", APPLIED)
        self.applied = Lsn(_U64.unpack(raw)[0] if raw else 0)
        batch: list[Record] = []
        expect = self.applied + 1
        for rec in self.log.read_from(Lsn(self.applied + 1)):
            if rec.lsn != expect and (self.log.gapless or rec.lsn < expect):
                raise LogCorrupted(_gap(self.applied, expect, rec.lsn))
            expect = rec.lsn + 1
            batch.append(rec)
            if len(batch) >= 1000:
                self._apply(batch)
                batch = []
        if batch:
            self._apply(batch)
        self.log.open(self.on_durable, on_failed=self._failed)
        self._lead()
        return self._restart_actions()

    def _index_running(self) -> None:
        """Build the index of running invocations once, for tables written before it existed.

        Without it a restart would decode every retained status to find the few running
        ones: seconds per restart after a day of traffic.
        """
        if self.store.get("meta", RUNNING_INDEXED) is not None:
            return
        tx = Transaction(self.store)
        for id, raw in self.store.scan("status", b""):
            if Status.decode(raw).phase == Phase.INVOKED:
                tx.put("running", id, b"")
        tx.put("meta", RUNNING_INDEXED, b"1")
        tx.commit()

    def _restart_actions(self) -> list[a.Action]:
        out: list[a.Action] = []
        for id, _ in self.store.scan("running", b""):
            # The attempt died with the old process: a new one starts with a new epoch,
            # through the log, so that the epoch bump is durable before the stream opens.
            self.propose(Manage(id=id, action=Terminate.RESTART))
        for k, _ in self.store.scan("timers", b""):
            out.append(a.RegisterTimer(_U64.unpack_from(k)[0], k))
        return out

    def on_durable(self, records: list[Record]) -> None:
        self._act(self._apply(records))

    def _apply(self, records: list[Record]) -> list[a.Action]:
        """Apply a durable batch in one write batch.

        A ``Fatal`` (the tables could not be read or written) passes: the disk's failure is
        not the commands' fault, and the batch is applied again after a restart. Any other
        error is a command the state machine cannot apply (it cannot be decoded, or applying
        it hits a bug); it must not stall everything behind it, so the batch is applied
        again one command per write batch, and what fails again is skipped in a way that
        still answers for it (``_skipped``). Both outcomes depend on the log alone, so a
        replay skips the same commands.
        """
        try:
            return self._apply_batch(records)
        except Exception:
            log.exception("applying a batch failed; retrying command by command")
        actions: list[a.Action] = []
        for rec in records:
            try:
                actions += self._apply_batch([rec])
            except Exception as e:
                log.exception("skipping log entry %d: the state machine cannot apply it", rec.lsn)
                actions += self._skipped(rec, e)
        return actions

    def _skipped(self, rec: Record, error: Exception) -> list[a.Action]:
        """Mark ``rec`` applied without its effects, but leave nothing unanswered: Kafka
        records are dead-lettered (or recorded as failed invocations) and their consumer
        gets its reply, so that its offsets move on; a waiting request gets a 500."""
        reason = f"log entry {rec.lsn} could not be applied: {error!r}"[:900]
        try:
            cmd: p.Message | None = decode_command(rec.payload)
        except Exception:
            cmd = None
        if isinstance(cmd, KafkaIngest):
            try:
                return self._apply_batch([rec], lambda ctx: unappliable_ingest(ctx, cmd, reason))
            except Exception:
                log.exception("log entry %d: dead-lettering its records failed too", rec.lsn)
        tx = Transaction(self.store)
        tx.put("meta", APPLIED, _U64.pack(rec.lsn))
        tx.commit()
        self.applied = rec.lsn
        waiter = getattr(cmd, "waiter", 0)
        if not waiter:
            return []
        return [a.Reply(waiter, "error", code=500, message=f"internal error: {reason}")]

    def _apply_batch(
        self, records: list[Record], apply: Callable[[Ctx], None] | None = None
    ) -> list[a.Action]:
        tx = Transaction(self.store)
        ctx = Ctx(tx, self.sm.registry, self.sm.config, self.index)
        for rec in records:
            ctx.now = rec.timestamp
            ctx.lsn = rec.lsn
            if apply is None:
                self.sm.apply(ctx, decode_command(rec.payload))
            else:
                apply(ctx)
        ctx.flush()
        last = records[-1].lsn
        tx.put("meta", APPLIED, _U64.pack(last))
        tx.commit()
        self.applied = last  # only now: a checkpoint trims the log up to here
        return ctx.actions


def _gap(applied: int, expect: int, got: int) -> str:
    if expect == applied + 1:
        # The tables are older than the log's trim point (deleted, or restored from an old
        # copy): replaying what is left would silently drop the trimmed entries.
        return (
            f"the tables have applied the log up to LSN {applied}, but the log starts at LSN "
            f"{got}: its older part was trimmed by a checkpoint, so the tables cannot be "
            "rebuilt from it; restore the data directory's db/ from the same copy as its log/"
        )
    return (
        f"the log skips from LSN {expect - 1} to LSN {got}: entries are missing in the middle "
        "(a segment deleted or damaged); restore the data directory (log/ and db/ together) "
        "from a backup"
    )
