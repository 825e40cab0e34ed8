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
from sluice.broker.errors import Fatal, LogError
from sluice.broker.files import write_durably
from sluice.broker.ids import Lsn
from sluice.broker.invoker import Invoker, InvokerOptions
from sluice.broker.log import (
    EmbeddedLog,
    KafkaLog,
    KafkaLogAddress,
    KafkaUnavailable,
    Log,
    ensure_topic,
)
from sluice.broker.partition import actions as a
from sluice.broker.partition._context import Config, RetryPolicy
from sluice.broker.partition._records import Expire, RequestCommand
from sluice.broker.partition.processor import APPLIED, Processor
from sluice.broker.partition.state_machine import StateMachine
from sluice.broker.schema import Registry
from sluice.broker.snapshots import Snapshot, Snapshots, repository
from sluice.broker.storage import RocksDBStore
from sluice.broker.timers import TimerService

if TYPE_CHECKING:
    from asyncio import _CoroutineLike  # typeshed's: what the loop hands a task factory

log = logging.getLogger("sluice.broker")
T = TypeVar("T")


class Broker:
    def __init__(self, settings: BrokerSettings) -> None:
        self.settings = settings
        self.registry = Registry()
        self._waiters: dict[int, asyncio.Future[a.Reply]] = {}
        self._boot = int.from_bytes(os.urandom(3), "big") << 32
        self._counter = 0
        self._servers: list[asyncio.Server] = []
        self.ingress_port = settings.ingress_port
        self.admin_port = settings.admin_port
        self.partitions = settings.partitions
        # Actions of extensions (Kafka subscriptions): type -> callback, set by their owner.
        self.action_hooks: dict[type, Callable[[Any], None]] = {}
        # Admitted work not finished yet, per source (ingress, subscriptions): admission.
        self.admitted: list[Callable[[], int]] = []
        # Set once the log or the tables failed (broker/errors.py): nothing more is accepted,
        # and ``dead`` tells the process to exit so that it is restarted.
        self.fatal: Fatal | None = None
        self.dead = asyncio.Event()
        self.snapshots: Snapshots | None = None
        self._snapped = 0  # the LSN of the newest snapshot taken or restored
        self.snapshot_error: str | None = None  # why the last snapshot failed, if it did
        self._snapped_at = time.monotonic()

    # --- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        s = self.settings
        data = s.data_dir
        data.mkdir(parents=True, exist_ok=True)
        self._watch_tasks()
        meta = data / "sluice.json"
        where = s.log or "embedded"
        if meta.exists():
            known = json.loads(meta.read_text())
            self.partitions = int(known["partitions"])
            if known.get("log", "embedded") != where:
                raise LogError(
                    f"the data directory {data} holds the tables of "
                    f"{_describe(known.get('log', 'embedded'))}, not of {_describe(where)}: "
                    "give each log a data directory of its own"
                )
        else:
            body = {"partitions": s.partitions, "format": 1, "log": where}
            write_durably(meta, json.dumps(body).encode())
        self.log = await self._open_log()
        if s.snapshots is not None:
            self.snapshots = Snapshots(
                repository(s.snapshots, s.snapshot_endpoint),
                where,
                staging=data / "snapshot-staging",
            )
        self.store = await self._open_tables(data / "db")
        config = Config(
            partitions=self.partitions,
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
        self.processor = Processor(
            self.log,
            self.store,
            self.sm,
            self._act,
            on_failed=self.die,
            node=socket.gethostname(),
            address=f"{s.host}:{s.ingress_port}",
        )
        # The invoker's effects and the timers' firings are this leader's own proposals.
        self.invoker = Invoker(
            self.registry,
            self.processor.propose,
            InvokerOptions(
                inactivity_timeout=s.inactivity_timeout_s,
                abort_timeout=s.abort_timeout_s,
                max_concurrent=s.max_concurrent_invocations,
            ),
        )
        self.timers = TimerService(self.processor.propose)
        self._act(self.processor.recover())
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
            return int(srv.sockets[0].getsockname()[1])

        self.ingress_port = await listen(Ingress(self).handle, s.ingress_port)
        self.admin_port = await listen(AdminApi(self).handle, s.admin_port)

        from sluice.broker.egress import Egress

        self.egress = Egress(self)  # before the consumers: results may come back at once
        await self.egress.start()

        from sluice.subscriptions import Controller

        self.subscriptions = Controller(self)
        await self.subscriptions.start()

    async def _open_tables(self, db: Path) -> RocksDBStore:
        """The tables. On a log that outlives the disk (Kafka), tables that are missing,
        corrupt, or older than the log's start are rebuilt: from the newest snapshot that
        reaches the log's start, else by replaying the whole log. Damaged or stale tables are
        moved aside (``db.<why>-<time>``), never deleted."""
        if not isinstance(self.log, KafkaLog):
            return RocksDBStore(db)
        start = self.log.start_lsn  # the first LSN the log holds
        if self.log.written and not await asyncio.to_thread(db.exists):
            await self._restore(db, start - 1)  # the tables were lost
        try:
            store = RocksDBStore(db)
        except Exception as e:
            if not _damaged(e):
                raise
            _move_aside(db, "corrupt", f"the tables cannot be opened ({e})")
            await self._restore(db, start - 1)
            store = RocksDBStore(db)
        raw = store.get("meta", APPLIED)
        applied = struct.unpack(">Q", raw)[0] if raw else 0
        if applied + 1 >= start:
            return store
        store.close()
        why = f"they have applied the log up to LSN {applied}, but it starts at LSN {start}"
        _move_aside(db, "behind", why)
        if await self._restore(db, start - 1) is None:
            raise LogError(
                f"the tables cannot be rebuilt: {why} and no snapshot reaches LSN {start - 1}; "
                "restore the snapshots the log was trimmed for"
            )
        return RocksDBStore(db)

    async def _restore(self, db: Path, at_least: int) -> Snapshot | None:
        """Restore the newest snapshot with at least ``at_least`` applied into ``db`` (which
        must not exist); None (and nothing restored) when there is none. A repository that
        fails (S3 unreachable) is tried again with backoff: replaying instead would miss what
        a trimmed log no longer holds."""
        if self.snapshots is None:
            return None
        backoff = 1.0
        while True:
            try:
                snap = await asyncio.to_thread(self.snapshots.restore_from, db, at_least)
                break
            except Exception as e:
                log.warning("cannot read the snapshots (%s); trying again in %.0fs", e, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)
        if snap is not None:
            self._snapped = snap.applied
        elif at_least > 0:
            log.warning("no snapshot reaches LSN %d", at_least)
        else:
            log.warning("no snapshot to restore: the whole log is replayed")
        return snap

    async def _open_log(self) -> Log:
        s = self.settings
        if s.log is None:
            return EmbeddedLog(s.data_dir / "log", fsync=s.fsync, segment_bytes=s.log_segment_bytes)
        where = KafkaLogAddress.parse(s.log)
        props = {"bootstrap.servers": where.bootstrap, **s.log_properties}
        backoff = 1.0
        while True:  # Kafka may start after the broker: wait for it, nothing listens meanwhile
            try:
                await asyncio.to_thread(
                    ensure_topic, props, where.topic, self.partitions, s.log_replication_factor, 5.0
                )
                # Until the partitions are physical (a processor per partition), one
                # processor runs them all on the topic's first partition.
                return await asyncio.to_thread(KafkaLog, props, where.topic, 0)
            except KafkaUnavailable as e:
                log.warning("waiting for the log: %s; trying again in %.0fs", e, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)

    async def _expire_loop(self, every: float = 5.0) -> None:
        """Ask the state machine (through the log) to forget invocations past retention, and
        checkpoint. A ``Fatal`` ends the loop (and the broker, through the task watch); any
        other error is logged and the next round tries again."""
        while True:
            await asyncio.sleep(every)
            try:
                now = int(time.time() * 1000)
                for k, _ in self.store.scan("expiry", b""):
                    if struct.unpack_from(">Q", k)[0] <= now:
                        self.processor.propose(Expire(upto=now))
                    break
                await self.checkpoint()
                await self._snapshot_if_due()
            except Exception:
                log.exception("retention expiry or checkpoint failed; trying again in %ss", every)

    def snapshot_lsn(self) -> int | None:
        """The LSN of the newest snapshot taken or restored (None: no snapshots)."""
        return self._snapped if self.snapshots is not None else None

    async def _snapshot_if_due(self) -> None:
        """Take a snapshot when enough was applied or enough time passed, then trim the log
        below the oldest snapshot kept. A snapshot that fails (S3 unreachable, a full disk)
        is tried again on the next round; the log and the tables go on meanwhile."""
        if self.snapshots is None:
            return
        s, applied = self.settings, self.processor.applied
        due = applied - self._snapped >= s.snapshot_every_records or (
            applied > self._snapped and time.monotonic() - self._snapped_at >= s.snapshot_interval_s
        )
        if not due:
            return
        try:
            snap = await asyncio.to_thread(self.snapshots.take, self.store)
        except Exception as e:
            self.snapshot_error = f"{type(e).__name__}: {e}"[:500]
            log.warning("taking a snapshot failed (%s); trying again later", self.snapshot_error)
            return
        self.snapshot_error = None
        self._snapped, self._snapped_at = snap.applied, time.monotonic()
        log.info("snapshot of the tables at LSN %d: %s", snap.applied, snap.where)
        oldest = await asyncio.to_thread(self.snapshots.oldest)
        if oldest is not None:
            await asyncio.to_thread(self.log.trim, Lsn(oldest.applied))

    async def checkpoint(self) -> int:
        """Sync the tables, then drop log segments they fully cover; return how many. (Not on
        a log that outlives the disk: that one is trimmed below snapshots only.)"""
        applied = self.processor.applied
        await asyncio.get_running_loop().run_in_executor(None, self.store.sync)
        return 0 if self.log.outlives_disk else self.log.trim(applied)

    # --- the failure policy (broker/errors.py) --------------------------------------------

    def die(self, error: Fatal) -> None:
        """The log or the tables failed: refuse new work, answer every waiting request with a
        503 (its outcome is unknown: it may be in the log, and the restart finishes it), turn
        the health checks red, and tell the process to exit (``dead``)."""
        if self.fatal is not None:
            return
        self.fatal = error
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
            self.die(exc)

    async def stop(self) -> None:
        self._expiry.cancel()
        if hasattr(self, "subscriptions"):
            await self.subscriptions.stop()
        if hasattr(self, "egress"):
            await self.egress.stop()
        for srv in self._servers:
            srv.close()
        self.timers.close()
        await self.invoker.close()
        await self.log.close()
        self.store.close()

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

    def submit(self, cmd: p.Message) -> None:
        if self.fatal is not None:
            raise Fatal("nothing more is accepted", self.fatal)
        self.processor.submit(cmd)

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

    async def request(self, cmd: RequestCommand) -> a.Reply:
        """Append a command carrying a fresh waiter id and wait for its reply."""
        wid, fut = self.waiter()
        cmd.waiter = wid
        self.submit(cmd)
        try:
            return await fut
        finally:
            self._waiters.pop(wid, None)

    # --- actions -------------------------------------------------------------------------

    def _act(self, actions: Iterable[a.Action]) -> None:
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
                self.timers.register(act.fire_at, act.key)
            else:
                hook = self.action_hooks.get(type(act))
                if hook is not None:
                    hook(act)


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
