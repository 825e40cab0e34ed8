"""The broker process: log, tables, state machine, invoker, timers, ingress and admin API."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import struct
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from sluice import protocol as p
from sluice.broker.config import BrokerSettings
from sluice.broker.errors import Fatal, LogError, LogInterrupted
from sluice.broker.files import write_durably
from sluice.broker.ids import Lsn, partition_key_of
from sluice.broker.invoker import Invoker, InvokerOptions
from sluice.broker.log import (
    EmbeddedLog,
    KafkaLog,
    KafkaLogAddress,
    KafkaUnavailable,
    Log,
    LogProducer,
    ensure_topic,
)
from sluice.broker.partition import actions as a
from sluice.broker.partition._context import Config, RetryPolicy, owner_of
from sluice.broker.partition._records import (
    Attach,
    Expire,
    Invoke,
    KafkaIngest,
    Manage,
    RequestCommand,
    Signal,
)
from sluice.broker.partition.processor import APPLIED, Processor
from sluice.broker.partition.state_machine import StateMachine
from sluice.broker.partitions import Partition, Shuffler, Tables
from sluice.broker.schema import Registry
from sluice.broker.snapshots import Snapshot, Snapshots, repository
from sluice.broker.storage import RocksDBStore
from sluice.broker.timers import TimerService

if TYPE_CHECKING:
    from asyncio import _CoroutineLike  # typeshed's: what the loop hands a task factory

    from sluice.broker.httpserver import Listener

log = logging.getLogger("sluice.broker")
T = TypeVar("T")


class Broker:
    def __init__(self, settings: BrokerSettings) -> None:
        self.settings = settings
        self.registry = Registry()
        self._waiters: dict[int, asyncio.Future[a.Reply]] = {}
        self._boot = int.from_bytes(os.urandom(3), "big") << 32
        self._counter = 0
        self._servers: list[Listener] = []
        self.ingress_port = settings.ingress_port
        self.admin_port = settings.admin_port
        self.partitions = settings.partitions
        # Actions of extensions (Kafka subscriptions, egress): type -> callback(action, the
        # partition whose state machine emitted it), set by their owner.
        self.action_hooks: dict[type, Callable[[Any, Partition], None]] = {}
        # Admitted work not finished yet, per source (ingress, subscriptions): admission.
        self.admitted: list[Callable[[], int]] = []
        # Set once the log or the tables failed (broker/errors.py): nothing more is accepted,
        # and ``dead`` tells the process to exit so that it is restarted.
        self.fatal: Fatal | None = None
        self.dead = asyncio.Event()
        self.parts: list[Partition] = []  # the physical partitions (broker/partitions.py)
        self._log_producer: LogProducer | None = None  # (on the Kafka log)
        self._shufflers: list[Shuffler] = []

    # --- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        s = self.settings
        data = s.data_dir
        data.mkdir(parents=True, exist_ok=True)
        self._watch_tasks()
        where = s.log or "embedded"
        processors = self._read_meta(data / "sluice.json", where)
        config = Config(
            partitions=self.partitions,
            processors=processors,
            retry=RetryPolicy(
                initial_ms=s.retry.initial_interval_ms,
                factor=s.retry.factor,
                max_interval_ms=s.retry.max_interval_ms,
                max_attempts=s.retry.max_attempts,
            ),
            idempotency_retention_ms=int(s.idempotency_retention_s * 1000),
            workflow_retention_ms=int(s.workflow_retention_s * 1000),
            completion_retention_ms=int(s.completion_retention_s * 1000),
        )
        self.sm = StateMachine(self.registry, config)
        if s.log is not None:
            await self._ensure_log_topic()
        for i in range(processors):
            self.parts.append(await self._open_partition(i, processors, where))
        self.tables = Tables([part.store for part in self.parts])
        # The invoker's effects and the timers' firings are their partition leader's own
        # proposals.
        self.invoker = Invoker(
            self.registry,
            lambda cmd: self.part_of(cmd.id).processor.propose(cmd),
            InvokerOptions(
                inactivity_timeout=s.inactivity_timeout_s,
                abort_timeout=s.abort_timeout_s,
                max_concurrent=s.max_concurrent_invocations,
            ),
        )
        # The first partition holds the deployments: it is replayed first, so that the others
        # replay with the services known.
        for part in self.parts:
            self._act(part.processor.recover(), part)
        self._shufflers = (
            [Shuffler(part, self.parts) for part in self.parts] if processors > 1 else []
        )
        for shuffler in self._shufflers:
            shuffler.start()
        self.invoker.start_sweeper()
        self._expiry = asyncio.ensure_future(self._expire_loop())

        from sluice.broker.admin import AdminApi
        from sluice.broker.httpserver import Handler, serve
        from sluice.ingress.http import Ingress

        async def listen(handler: Handler, port: int) -> int:
            """Serve `handler` on `port` (0: any free one); return the port bound."""
            srv = await serve(
                handler, s.host, port, body_limit=s.body_limit, read_timeout=s.read_timeout_s
            )
            self._servers.append(srv)
            return srv.port

        self.ingress_port = await listen(Ingress(self).handle, s.ingress_port)
        self.admin_port = await listen(AdminApi(self).handle, s.admin_port)

        from sluice.broker.egress import Egress

        self.egress = Egress(self)  # before the consumers: results may come back at once
        await self.egress.start()

        from sluice.subscriptions import Controller

        self.subscriptions = Controller(self)
        await self.subscriptions.start()

    def _read_meta(self, meta: Path, where: str) -> int:
        """Check the data directory against the flags (``sluice.json``, written when it is
        created); return how many partitions have a processor of their own."""
        s = self.settings
        if not meta.exists():
            processors = s.partitions if s.physical_partitions else 1
            body = {"partitions": s.partitions, "format": 1, "log": where, "processors": processors}
            write_durably(meta, json.dumps(body).encode())
            return processors
        known = json.loads(meta.read_text())
        self.partitions = int(known["partitions"])
        if known.get("log", "embedded") != where:
            raise LogError(
                f"the data directory {meta.parent} holds the tables of "
                f"{_describe(known.get('log', 'embedded'))}, not of {_describe(where)}: "
                "give each log a data directory of its own"
            )
        processors = int(known.get("processors", 1))
        if s.physical_partitions and processors == 1 and self.partitions > 1:
            raise LogError(
                f"the data directory {meta.parent} was created with one processor for all "
                "partitions: --physical-partitions is chosen when a data directory is created"
            )
        return processors

    def _kafka_log(self) -> tuple[dict[str, str], str]:
        """The Kafka log's client properties and topic."""
        s = self.settings
        assert s.log is not None
        where = KafkaLogAddress.parse(s.log)
        return {"bootstrap.servers": where.bootstrap, **s.log_properties}, where.topic

    async def _ensure_log_topic(self) -> None:
        # Kafka may start after the broker: wait for it, nothing listens meanwhile.
        props, topic = self._kafka_log()
        rf = self.settings.log_replication_factor
        await _patiently(
            lambda: ensure_topic(props, topic, self.partitions, rf, 5.0),
            KafkaUnavailable,
            "waiting for the log",
        )

    async def _open_partition(self, index: int, processors: int, where: str) -> Partition:
        """Partition ``index``'s log, tables, processor and timers. With one processor, the
        data directory keeps the layout it always had (``log/``, ``db/``); with several, each
        partition has ``partitions/N/``."""
        s = self.settings
        root = s.data_dir if processors == 1 else s.data_dir / "partitions" / str(index)
        plog = await self._open_log(index, root)
        snapshots = None
        if s.snapshots is not None:
            repo = s.snapshots if processors == 1 else f"{s.snapshots.rstrip('/')}/p{index}"
            snapshots = Snapshots(
                repository(repo, s.snapshot_endpoint),
                where if processors == 1 else f"{where}#{index}",
                staging=root / "snapshot-staging",
            )
        store, snapped = await self._open_tables(plog, snapshots, root / "db")

        def act(actions: list[a.Action]) -> None:
            self._act(actions, self.parts[index])

        processor = Processor(
            plog,
            store,
            self.sm,
            act,
            on_failed=self.die,
            node=socket.gethostname(),
            address=f"{s.host}:{s.ingress_port}",
            index=index,
        )
        timers = TimerService(processor.propose)
        return Partition(index, plog, store, processor, timers, snapshots, snapped=snapped)

    async def _open_tables(
        self, plog: Log, snapshots: Snapshots | None, db: Path
    ) -> tuple[RocksDBStore, int]:
        """The tables, and the LSN of the snapshot restored into them (0: none). On a log
        that outlives the disk (Kafka), tables that are missing, corrupt, or older than the
        log's start are rebuilt: from the newest snapshot that reaches the log's start, else
        by replaying the whole log. Damaged or stale tables are moved aside
        (``db.<why>-<time>``), never deleted."""
        if not isinstance(plog, KafkaLog):
            return RocksDBStore(db), 0
        start = plog.start_lsn  # the first LSN the log holds
        restored = None
        if plog.written and not await asyncio.to_thread(db.exists):
            restored = await self._restore(snapshots, db, start - 1)  # the tables were lost
        try:
            store = RocksDBStore(db)
        except Exception as e:
            if not _damaged(e):
                raise
            _move_aside(db, "corrupt", f"the tables cannot be opened ({e})")
            restored = await self._restore(snapshots, db, start - 1)
            store = RocksDBStore(db)
        raw = store.get("meta", APPLIED)
        applied = struct.unpack(">Q", raw)[0] if raw else 0
        if applied + 1 >= start:
            return store, restored.applied if restored is not None else 0
        store.close()
        why = f"they have applied the log up to LSN {applied}, but it starts at LSN {start}"
        _move_aside(db, "behind", why)
        restored = await self._restore(snapshots, db, start - 1)
        if restored is None:
            raise LogError(
                f"the tables cannot be rebuilt: {why} and no snapshot reaches LSN {start - 1}; "
                "restore the snapshots the log was trimmed for"
            )
        return RocksDBStore(db), restored.applied

    async def _restore(
        self, snapshots: Snapshots | None, db: Path, at_least: int
    ) -> Snapshot | None:
        """Restore the newest snapshot with at least ``at_least`` applied into ``db`` (which
        must not exist); None (and nothing restored) when there is none. A repository that
        fails (S3 unreachable) is tried again with backoff: replaying instead would miss what
        a trimmed log no longer holds."""
        if snapshots is None:
            return None
        snap = await _patiently(
            lambda: snapshots.restore_from(db, at_least), Exception, "cannot read the snapshots"
        )
        if snap is None and at_least > 0:
            log.warning("no snapshot reaches LSN %d", at_least)
        elif snap is None:
            log.warning("no snapshot to restore: the whole log is replayed")
        return snap

    async def _open_log(self, index: int, root: Path) -> Log:
        s = self.settings
        if s.log is None:
            return EmbeddedLog(root / "log", fsync=s.fsync, segment_bytes=s.log_segment_bytes)
        props, topic = self._kafka_log()
        if self._log_producer is None:  # (one for every partition's log)
            self._log_producer = LogProducer(props, topic, f"sluice-log-{topic}")
        producer = self._log_producer
        return await _patiently(
            lambda: KafkaLog(props, topic, index, producer=producer),
            KafkaUnavailable,
            "waiting for the log",
        )

    # --- partitions ----------------------------------------------------------------------

    def part_of(self, id: bytes) -> Partition:
        """The partition that owns the invocation ``id`` (partition/_context.py, ``owner``)."""
        parts = self.parts
        return parts[0] if len(parts) == 1 else parts[owner_of(id, len(parts))]

    def _part_for(self, cmd: p.Message) -> Partition:
        """Where a command from outside goes: to the partition of the invocation it is about;
        the broker's metadata (deployments, Kafka clusters, subscriptions) and Kafka records
        to the first."""
        if len(self.parts) == 1:
            return self.parts[0]
        if isinstance(cmd, Invoke | Attach | Manage):
            return self.part_of(cmd.id)
        if isinstance(cmd, Signal):
            return self.part_of(cmd.target)
        if isinstance(cmd, KafkaIngest):
            return self.ingesting(cmd.producer)
        return self.parts[0]

    def ingesting(self, producer: bytes) -> Partition:
        """The partition that ingests a Kafka source partition (``producer``: its id in
        lifecycle/kafka.py): it keeps the position and the outbox rows of its records."""
        return self.parts[partition_key_of(producer) % len(self.parts)]

    @property
    def store(self) -> RocksDBStore:
        """The first partition's tables: the broker's metadata (deployments, Kafka clusters,
        subscriptions) lives there. ``tables`` reads every partition's."""
        return self.parts[0].store

    @property
    def processor(self) -> Processor:
        return self.parts[0].processor

    async def _expire_loop(self, every: float = 5.0) -> None:
        """Ask each partition (through its log) to forget invocations past retention, and
        checkpoint. A ``Fatal`` ends the loop (and the broker, through the task watch); any
        other error is logged and the next round tries again."""
        while True:
            await asyncio.sleep(every)
            try:
                now = int(time.time() * 1000)
                for part in self.parts:
                    for k, _ in part.store.scan("expiry", b""):
                        if struct.unpack_from(">Q", k)[0] <= now:
                            part.processor.propose(Expire(upto=now))
                        break
                await self.checkpoint()
                for part in self.parts:
                    await self._snapshot_if_due(part)
            except Exception:
                log.exception("retention expiry or checkpoint failed; trying again in %ss", every)

    def snapshot_lsn(self, part: Partition | None = None) -> int | None:
        """The LSN of the newest snapshot taken or restored (None: no snapshots)."""
        part = part or self.parts[0]
        return part.snapped if part.snapshots is not None else None

    async def _snapshot_if_due(self, part: Partition) -> None:
        """Take a snapshot when enough was applied or enough time passed, then trim the log
        below the oldest snapshot kept. A snapshot that fails (S3 unreachable, a full disk)
        is tried again on the next round; the log and the tables go on meanwhile."""
        snapshots = part.snapshots
        if snapshots is None:
            return
        s, applied = self.settings, part.processor.applied
        due = applied - part.snapped >= s.snapshot_every_records or (
            applied > part.snapped and time.monotonic() - part.snapped_at >= s.snapshot_interval_s
        )
        if not due:
            return
        try:
            snap = await asyncio.to_thread(snapshots.take, part.store)
        except Exception as e:
            part.snapshot_error = f"{type(e).__name__}: {e}"[:500]
            log.warning("taking a snapshot failed (%s); trying again later", part.snapshot_error)
            return
        part.snapshot_error = None
        part.snapped, part.snapped_at = snap.applied, time.monotonic()
        log.info("snapshot of the tables at LSN %d: %s", snap.applied, snap.where)
        oldest = await asyncio.to_thread(snapshots.oldest)
        if oldest is not None:
            await asyncio.to_thread(part.log.trim, Lsn(oldest.applied))

    async def checkpoint(self) -> int:
        """Sync the tables, then drop log segments they fully cover; return how many. (Not on
        a log that outlives the disk: that one is trimmed below snapshots only.)"""
        dropped = 0
        for part in self.parts:
            applied = part.processor.applied
            await asyncio.get_running_loop().run_in_executor(None, part.store.sync)
            dropped += 0 if part.log.outlives_disk else part.log.trim(applied)
        return dropped

    # --- the failure policy (broker/errors.py) --------------------------------------------

    def die(self, error: Fatal) -> None:
        """The log or the tables failed: refuse new work, answer every waiting request with a
        503 (its outcome is unknown: it may be in the log, and the restart finishes it), turn
        the health checks red, and tell the process to exit (``dead``)."""
        if self.fatal is not None:
            return
        self.fatal = error
        if isinstance(error, LogInterrupted):
            log.error("the Kafka log was interrupted: %s; the broker stops, to start again",
                      error.reason)  # fmt: skip
        else:
            log.critical("fatal: %s; the broker stops and must be restarted", error.reason)
        message = (
            f"the broker stopped before it could confirm this ({error.reason}); it restarts "
            "and finishes what its log holds: retry with the same idempotency key"
        )
        waiters, self._waiters = self._waiters, {}
        for wid, fut in waiters.items():
            if not fut.done():
                fut.set_result(a.Reply(wid, "error", code=503, message=message))
        self.dead.set()

    def unavailable(self) -> str | None:
        """Why the broker takes no more work for good (it is about to exit), or None."""
        return None if self.fatal is None else f"the broker failed: {self.fatal.reason}"

    def _watch_tasks(self) -> None:
        """Every task of this loop reports a ``Fatal`` it ended with to ``die``: a task's
        exception would otherwise wait, unseen, until the task is collected."""
        loop = asyncio.get_running_loop()

        def factory(
            loop: asyncio.AbstractEventLoop, coro: _CoroutineLike[T], **kw: Any
        ) -> asyncio.Task[T]:
            task = asyncio.Task(coro, loop=loop, **kw)
            task.add_done_callback(self._task_done)
            return task

        loop.set_task_factory(factory)
        default = loop.get_exception_handler()

        def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
            exc = context.get("exception")
            if isinstance(exc, Fatal):
                if self.fatal is not None:
                    return  # (what runs on until the broker stops meets the failure again)
                self.die(exc)
            if default is not None:
                default(loop, context)
            else:
                loop.default_exception_handler(context)

        loop.set_exception_handler(handler)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        # (``_exception``, not ``exception()``: that would mark any other error as retrieved
        # and silence asyncio's "never retrieved" report of it.)
        exc = None if task.cancelled() else getattr(task, "_exception", None)
        if isinstance(exc, Fatal):
            task.exception()  # (handled here: not reported again when the task is collected)
            self.die(exc)

    async def stop(self) -> None:
        self._expiry.cancel()
        if hasattr(self, "subscriptions"):
            await self.subscriptions.stop()
        if hasattr(self, "egress"):
            await self.egress.stop()
        for srv in self._servers:
            srv.close()
        for shuffler in self._shufflers:
            await shuffler.stop()
        for part in self.parts:
            part.timers.close()
        await self.invoker.close()
        for part in self.parts:
            await part.log.close()
            part.store.close()

    # --- admission -----------------------------------------------------------------------

    def _loads(self) -> tuple[int, int]:
        """(invocations running or waiting for the invoker, requests and records admitted
        and unfinished): two views of the same work, so the limit applies to each."""
        return self.invoker.load, sum(source() for source in self.admitted)

    def overload(self) -> str | None:
        """Why new work must wait (the ingress answers 503, subscriptions stop reading), or
        None. The invoker's count sees work from every source (sends, timers, calls between
        handlers); the admitted count sees what it does not yet run: appends waiting for
        the log, and invocations queued behind their object key."""
        if self.fatal is not None:
            return self.unavailable()
        limit = self.settings.admission_limit
        if not limit:
            return None
        running, admitted = self._loads()
        if running >= limit:
            return f"{running} invocations running or queued"
        if admitted >= limit:
            return f"{admitted} requests and Kafka records in flight"
        return None

    def admission_room(self) -> int:
        """How much more work fits under the admission limit (a large number: no limit)."""
        limit = self.settings.admission_limit
        return limit - max(self._loads()) if limit else 1 << 30

    # --- requests ------------------------------------------------------------------------

    def submit(self, cmd: p.Message, part: Partition | None = None) -> None:
        """Append ``cmd`` to the log of ``part``, by default the partition it is about."""
        if self.fatal is not None:
            raise Fatal("nothing more is accepted", self.fatal)
        (part or self._part_for(cmd)).processor.submit(cmd)

    def waiter(self) -> tuple[int, asyncio.Future[a.Reply]]:
        if self.fatal is not None:
            raise Fatal("nothing more is accepted", self.fatal)
        self._counter += 1
        wid = self._boot | self._counter
        fut: asyncio.Future[a.Reply] = asyncio.get_running_loop().create_future()
        self._waiters[wid] = fut
        return wid, fut

    def forget(self, wid: int) -> None:
        self._waiters.pop(wid, None)

    async def request(self, cmd: RequestCommand, part: Partition | None = None) -> a.Reply:
        """Append a command carrying a fresh waiter id (to ``part``, by default the partition
        it is about) and wait for its reply."""
        wid, fut = self.waiter()
        cmd.waiter = wid
        self.submit(cmd, part)
        try:
            return await fut
        finally:
            self._waiters.pop(wid, None)

    # --- actions -------------------------------------------------------------------------

    def _act(self, actions: Iterable[a.Action], part: Partition) -> None:
        inv = self.invoker
        for act in actions:
            # ``type(act) is``, not isinstance: half the cost, on a path taken per action, and
            # mypy narrows the union on it as well.
            if type(act) is a.SendToAttempt:
                inv.send(act)
            elif type(act) is a.Reply:
                fut = self._waiters.pop(act.waiter, None)
                if fut is not None and not fut.done():
                    fut.set_result(act)
            elif type(act) is a.StartAttempt:
                inv.start(act)
            elif type(act) is a.AbortAttempt:
                inv.abort(act)
            elif type(act) is a.RegisterTimer:
                part.timers.register(act.fire_at, act.key)
            elif type(act) is a.ShuffleReady:
                self._shufflers[part.index].ready()
            else:
                hook = self.action_hooks.get(type(act))
                if hook is not None:
                    hook(act, part)


async def _patiently(call: Callable[[], T], retriable: type[Exception], waiting: str) -> T:
    """``call`` off the event loop, tried again with backoff (1 s, doubling up to 30 s, a
    warning each time) while it raises ``retriable``."""
    backoff = 1.0
    while True:
        try:
            return await asyncio.to_thread(call)
        except retriable as e:
            log.warning("%s: %s; trying again in %.0fs", waiting, e, backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 30.0)


def _describe(log: str) -> str:
    return "the embedded log" if log == "embedded" else f"the log {log}"


def _damaged(error: Exception) -> bool:
    """Whether RocksDB refused to open the tables because their files are damaged or missing
    (not for a lock held by another process, a permission, or a failing disk)."""
    text = str(error)
    return text.startswith("Corruption") or text.startswith("IO error: No such file")


def _move_aside(db: Path, why: str, reason: str) -> None:
    aside = db.with_name(f"{db.name}.{why}-{time.strftime('%Y%m%dT%H%M%S')}")
    db.rename(aside)
    log.warning("the tables are rebuilt from the log: %s; the old ones are in %s", reason, aside)
