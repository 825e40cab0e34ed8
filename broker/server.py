"""The broker process: log, tables, state machine, invoker, timers, ingress and admin API."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable, Iterable
from typing import Any

from broker.config import BrokerSettings
from broker.invoker import Invoker, InvokerOptions
from broker.log import EmbeddedLog
from broker.partition import actions as a
from broker.partition._context import Config, RetryPolicy
from broker.partition._records import Expire
from broker.partition.processor import Processor
from broker.partition.state_machine import StateMachine
from broker.schema import Registry
from broker.storage import RocksDBStore
from broker.timers import TimerService
from sdk import protocol as p


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

    # --- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        s = self.settings
        data = s.data_dir
        data.mkdir(parents=True, exist_ok=True)
        meta = data / "sluice.json"
        if meta.exists():
            self.partitions = int(json.loads(meta.read_text())["partitions"])
        else:
            meta.write_text(json.dumps({"partitions": s.partitions, "format": 1}))
        self.store = RocksDBStore(data / "db")
        self.log = EmbeddedLog(data / "log", fsync=s.fsync, segment_bytes=s.log_segment_bytes)
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
        self.processor = Processor(self.log, self.store, self.sm, self._act)
        self.invoker = Invoker(
            self.registry,
            self.processor.submit,
            InvokerOptions(
                inactivity_timeout=s.inactivity_timeout_s,
                abort_timeout=s.abort_timeout_s,
                max_concurrent=s.max_concurrent_invocations,
            ),
        )
        self.timers = TimerService(self.processor.submit)
        self._act(self.processor.recover())
        self.invoker.start_sweeper()
        self._expiry = asyncio.ensure_future(self._expire_loop())

        from broker.admin import AdminApi
        from broker.httpserver import Handler, serve
        from ingress.http import Ingress

        async def listen(handler: Handler, port: int) -> int:
            """Serve `handler` on `port` (0: any free one); return the port bound."""
            srv = await serve(
                handler, s.host, port, body_limit=s.body_limit, read_timeout=s.read_timeout_s
            )
            self._servers.append(srv)
            return int(srv.sockets[0].getsockname()[1])

        self.ingress_port = await listen(Ingress(self).handle, s.ingress_port)
        self.admin_port = await listen(AdminApi(self).handle, s.admin_port)

        from broker.egress import Egress

        self.egress = Egress(self)  # before the consumers: results may come back at once
        await self.egress.start()

        from subscriptions import Controller

        self.subscriptions = Controller(self)
        await self.subscriptions.start()

    async def _expire_loop(self, every: float = 5.0) -> None:
        """Ask the state machine (through the log) to forget invocations past retention."""
        import struct
        import time

        while True:
            await asyncio.sleep(every)
            now = int(time.time() * 1000)
            for k, _ in self.store.scan("expiry", b""):
                if struct.unpack_from(">Q", k)[0] <= now:
                    self.submit(Expire(upto=now))
                break
            await self.checkpoint()

    async def checkpoint(self) -> int:
        """Sync the tables, then drop log segments they fully cover; return how many."""
        applied = self.processor.applied
        await asyncio.get_running_loop().run_in_executor(None, self.store.sync)
        return self.log.trim(applied)  # type: ignore[arg-type]

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
        self.processor.submit(cmd)

    def waiter(self) -> tuple[int, asyncio.Future[a.Reply]]:
        self._counter += 1
        wid = self._boot | self._counter
        fut: asyncio.Future[a.Reply] = asyncio.get_running_loop().create_future()
        self._waiters[wid] = fut
        return wid, fut

    def forget(self, wid: int) -> None:
        self._waiters.pop(wid, None)

    async def request(self, cmd: p.Message) -> a.Reply:
        """Append a command carrying a fresh waiter id and wait for its reply."""
        wid, fut = self.waiter()
        cmd.waiter = wid  # type: ignore[attr-defined]
        self.submit(cmd)
        try:
            return await fut
        finally:
            self._waiters.pop(wid, None)

    # --- actions -------------------------------------------------------------------------

    def _act(self, actions: Iterable[a.Action]) -> None:
        inv = self.invoker
        for act in actions:
            t = type(act)
            if t is a.SendToAttempt:
                inv.send(act)  # type: ignore[arg-type]
            elif t is a.Reply:
                fut = self._waiters.pop(act.waiter, None)  # type: ignore[union-attr]
                if fut is not None and not fut.done():
                    fut.set_result(act)  # type: ignore[arg-type]
            elif t is a.StartAttempt:
                inv.start(act)  # type: ignore[arg-type]
            elif t is a.AbortAttempt:
                inv.abort(act)  # type: ignore[arg-type]
            elif t is a.RegisterTimer:
                self.timers.register(act.fire_at, act.key)  # type: ignore[union-attr]
            else:
                hook = self.action_hooks.get(t)
                if hook is not None:
                    hook(act)
