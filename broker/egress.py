"""Kafka egress: drives one ``EgressSink`` per (cluster, egress partition) from the outbox.

    outbox rows (READY/EMPTY, in sequence order, none behind a PENDING row of its lane)
        ─► EgressSink.send: one Kafka transaction with the sink's marker
        ─► EgressCommitted(upto, seqs) appended to the log ─► the state machine trims them

The producer id (transactional id, ``sluice-producer`` header, marker key) is
``sluice-<node>-<cluster>-<partition>``: ``<node>`` is created once per data directory, so a
restarted broker reuses it (fencing its dead self) and two brokers never share one. On
physical partitions each Sluice partition has its own outbox and its own sinks, with
``-p<index>`` after the id: the results of one partition do not queue behind another's.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import re
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from sluice.broker import faults
from sluice.broker.errors import Fatal
from sluice.broker.files import write_durably
from sluice.broker.partition._outbox import (
    EGRESS_NODE_KEY,
    EgressCommitted,
    EgressIdentity,
    FailedRecord,
    OutboxEntry,
    OutboxReady,
    OutboxState,
    outbox_prefix,
    parse_outbox_key,
)
from sluice.broker.partition.lifecycle.egress import (
    EGRESS_PARTITIONS,
    batch_item,
    inline_value,
    records_of,
)
from sluice.connectors.kafka._egress import EgressSink, OutRecord, Progress
from sluice.connectors.serde import DecodeError

from .egress_encoding import OutputEncoder

if TYPE_CHECKING:
    from sluice.broker.partitions import Partition
    from sluice.broker.server import Broker

log = logging.getLogger("sluice.egress")

MAX_TRANSACTION_RECORDS = 5000  # a row's records never split across transactions


_NODE_ID = re.compile(r"[0-9a-f]{12}")


async def node_id(broker: Broker) -> tuple[str, bool]:
    """This data directory's egress identity, created on first use; and whether it was
    created now (then no earlier process used it).

    It is kept twice, each copy durable before any record is sent under it: in the file
    ``egress-id`` and in the tables, through the log (``EgressIdentity``). A copy that is
    missing or not an identity (a power loss took it) is written again from the other: a new
    identity would send the rows committed under the old one once more, under another
    ``sluice-producer``."""
    path = broker.settings.data_dir / "egress-id"
    text = path.read_text().strip() if path.exists() else ""
    in_file = text if _NODE_ID.fullmatch(text) else ""
    in_store = (broker.store.get("meta", EGRESS_NODE_KEY) or b"").decode("ascii", "replace")
    in_store = in_store if _NODE_ID.fullmatch(in_store) else ""
    ident = in_store or in_file
    created = not ident
    if created:
        ident = os.urandom(6).hex()
    elif text and not in_file:
        log.warning("egress-id held %r, not an identity: %s restored from the tables", text, ident)
    if in_store != ident:
        reply = await broker.request(EgressIdentity(node=ident))
        if reply.kind != "ok":
            raise RuntimeError(f"the log did not take the egress identity: {reply.message}")
    if in_file != ident:
        write_durably(path, ident.encode())
    return ident, created


class Egress:
    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.node = ""  # (start)
        self.new_node = False
        self.workers: dict[tuple[int, str, int], SinkWorker] = {}

    async def start(self) -> None:
        self.node, self.new_node = await node_id(self.broker)
        self.broker.action_hooks[OutboxReady] = self._ready
        for part in self.broker.parts:
            seen = set()
            for k, _ in part.store.scan("outbox", b""):
                cluster, sink, _ = parse_outbox_key(k)
                seen.add((cluster, sink))
            for cluster, sink in sorted(seen):
                self._ready(OutboxReady(cluster, sink), part)

    async def stop(self) -> None:
        for w in list(self.workers.values()):
            await w.stop()
        self.workers.clear()

    def _ready(self, act: OutboxReady, part: Partition) -> None:
        key = (part.index, act.cluster, act.sink)
        w = self.workers.get(key)
        if w is None:
            w = self.workers[key] = SinkWorker(self, part, act.cluster, act.sink)
            w.start()
        w.wake()

    def to_json(self) -> list[dict[str, Any]]:
        return [w.to_json() for _, w in sorted(self.workers.items())]


class SinkWorker:
    def __init__(self, egress: Egress, part: Partition, cluster: str, sink: int) -> None:
        self.egress = egress
        self.broker = egress.broker
        self.part = part  # whose outbox it sends, and whose log trims it
        self.cluster = cluster
        self.sink = sink
        self.producer_id = f"sluice-{egress.node}-{cluster}-{sink}"
        if len(self.broker.parts) > 1:
            self.producer_id += f"-p{part.index}"
        self.status = "starting"
        self.cursor = 1  # every row below it is sent (or trimmed)
        self.progress = Progress()  # the last marker committed
        self.waiting = 0  # lanes held back by a PENDING row, at the last look
        self._sent: set[int] = set()  # rows at or past the cursor sent, perhaps not trimmed
        # (seq, part, reason) of records left out (format), until their dead letters are in
        # the log: every marker repeats them (connectors/kafka/_egress.py).
        self._unconfirmed: list[tuple[int, int, str]] = []
        self.sent = 0
        self.failed = 0
        self.transactions = 0
        self._encoder = OutputEncoder(cluster)
        self._kafka: EgressSink | None = None
        self._visible: set[tuple[int, int]] = set()
        self._recovered = False  # once in this process
        self._event = asyncio.Event()
        self._ex = ThreadPoolExecutor(1, thread_name_prefix=f"egress-{cluster}-{sink}")
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name=f"egress:{self.cluster}:{self.sink}"
        )

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            # (a task that ended with the broker's failure raises it again here; the broker
            # was told when the task ended: a stop goes on to close the rest)
            with contextlib.suppress(asyncio.CancelledError, Exception, Fatal):
                await self._task
        if self._kafka is not None:
            await asyncio.get_running_loop().run_in_executor(self._ex, self._kafka.close)
        self._ex.shutdown(wait=False)

    def wake(self) -> None:
        self._event.set()

    def to_json(self) -> dict[str, Any]:
        return {
            "cluster": self.cluster,
            "partition": self.sink,
            "sluice_partition": self.part.index,
            "producer": self.producer_id,
            "state": self.status,
            "next_seq": self.cursor,
            "lanes_waiting": self.waiting,
            "records_sent": self.sent,
            "records_failed": self.failed,
            "transactions": self.transactions,
        }

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                if self._kafka is None or not self._kafka.ready:
                    await self._recover(loop)
                if not await self._step(loop):
                    self._event.clear()
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(self._event.wait(), 5.0)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # keep the sink alive; it says why it stalls
                self.status = f"error: {e}"
                log.warning("egress %s: %s; retrying in 1s", self.producer_id, e)
                if self._kafka is not None:
                    kafka, self._kafka = self._kafka, None
                    with contextlib.suppress(Exception):
                        await loop.run_in_executor(self._ex, kafka.close)
                await asyncio.sleep(1.0)

    def _cluster_row(self) -> dict[str, Any]:
        raw = self.broker.store.get("kafka_clusters", self.cluster.encode())
        if raw is None:
            raise LookupError(f"kafka cluster '{self.cluster}' is not defined")
        row: dict[str, Any] = json.loads(raw)
        return row

    def _properties(self) -> dict[str, str]:
        props: dict[str, str] = self._cluster_row()["properties"]
        return props

    def _registry(self) -> str:
        return str(self._cluster_row().get("schema_registry") or "")

    async def _recover(self, loop: asyncio.AbstractEventLoop) -> None:
        self.status = "recovering"
        kafka = EgressSink(
            self._properties(),
            producer_id=self.producer_id,
            marker_partition=self.sink,
            progress_partitions=EGRESS_PARTITIONS,
            before_commit=functools.partial(faults.reached, "before-egress-commit"),
        )
        topics: set[str] = set()
        rows: list[tuple[int, OutboxEntry]] = []
        prefix = outbox_prefix(self.cluster, self.sink)
        for k, raw in self.part.store.scan("outbox", prefix):
            e = OutboxEntry.decode(raw)
            topics.update(r.topic for r in records_of(e))
            if e.topic:
                topics.add(e.topic)
            if e.state != OutboxState.PENDING:
                rows.append((int.from_bytes(k[len(prefix) :], "big"), e))
        # A new node's producer has nothing in Kafka yet: its first recovery reads nothing.
        fresh = self.egress.new_node and not self._recovered
        rec = await loop.run_in_executor(
            self._ex, functools.partial(kafka.recover, topics, fresh=fresh)
        )
        self._recovered = True
        self._kafka = kafka
        self._visible = rec.visible
        done = {seq: e for seq, e in rows if rec.progress.committed(seq, e.lane)}
        self.progress = rec.progress
        self.cursor = rec.seq + 1
        self._sent = {seq for seq in done if seq >= self.cursor}
        if done:
            # Rows committed to Kafka but not trimmed: their records that did not fit their
            # format are named by the marker (not encoded again: the registry may have
            # changed since), and dead-lettered by the trim that did not happen.
            failed = []
            for seq, part, why in rec.progress.failed:
                row = done.get(seq)
                records = records_of(row) if row is not None else []
                if part < len(records):
                    r = records[part]
                    failed.append(FailedRecord(seq, part, r.key, r.value, why))
            if failed:
                log.warning(
                    "egress %s: %d records of rows committed before a restart did not fit"
                    " their format (the marker names them): dead-lettered now",
                    self.producer_id,
                    len(failed),
                )
            self._unconfirmed = list(rec.progress.failed)
            self._trim(sorted(done), failed)
        self.status = "running"
        log.info(
            "egress %s resumes after seq %d (%d lanes past it, %d records already visible)",
            self.producer_id,
            rec.seq,
            len(rec.progress.lanes),
            len(rec.visible),
        )

    def _trim(self, seqs: list[int], failed: list[FailedRecord]) -> None:
        """Trim ``seqs`` (committed to Kafka), in the log; the failed records leave the
        marker once their dead letters are in the log."""
        upto = self.cursor - 1
        cmd = EgressCommitted(
            cluster=self.cluster,
            sink=self.sink,
            upto=upto,
            seqs=[s for s in seqs if s > upto],
            failed=failed,
        )
        if failed:
            wid, fut = self.broker.waiter()
            cmd.waiter = wid
            named = {(f.seq, f.part) for f in failed}
            fut.add_done_callback(lambda _: self._confirmed(named))
        self.broker.submit(cmd, self.part)

    def _confirmed(self, named: set[tuple[int, int]]) -> None:
        self._unconfirmed = [f for f in self._unconfirmed if (f[0], f[1]) not in named]

    def _collect(self) -> tuple[list[tuple[int, OutboxEntry]], int]:
        """The rows to send now, from the cursor in sequence order: those not PENDING and
        with no PENDING row before them in their lane, up to a transaction's worth; and the
        cursor after them (every row below it sent)."""
        prefix = outbox_prefix(self.cluster, self.sink)
        rows: list[tuple[int, OutboxEntry]] = []
        count = 0
        blocked: set[int] = set()
        low = top = 0
        seen: set[int] = set()  # of the rows sent before
        cut = None
        for k, raw in self.part.store.scan("outbox", prefix):
            seq = int.from_bytes(k[len(prefix) :], "big")
            if seq < self.cursor:
                continue
            if seq in self._sent:
                seen.add(seq)
                top = seq
                continue
            e = OutboxEntry.decode(raw)
            if e.state == OutboxState.PENDING or e.lane in blocked:
                blocked.add(e.lane)
                low = low or seq
                continue
            n = len(e.records) or (e.raw.count(b'"value') if e.raw else 0)
            if rows and count + n > MAX_TRANSACTION_RECORDS:
                low, cut = low or seq, seq
                break
            rows.append((seq, e))
            count += n
            top = seq
        self.waiting = len(blocked)
        # Rows sent before and not found are trimmed (below where the scan stopped).
        self._sent = {s for s in self._sent if s in seen or (cut is not None and s > cut)}
        return rows, low or max(top + 1, self.cursor)

    def _send_rows(
        self, rows: list[tuple[int, OutboxEntry]], progress: Progress
    ) -> tuple[int, list[FailedRecord]]:
        """In the sink's thread: rows to records, one transaction with the marker
        ``progress``; the records sent and those that could not be encoded."""
        out, failed = self._records(rows)
        progress.failed += [(f.seq, f.part, f.reason) for f in failed]
        if out or failed:
            assert self._kafka is not None
            self._kafka.send(out, progress)
        return len(out), failed

    def _records(
        self, rows: list[tuple[int, OutboxEntry]]
    ) -> tuple[list[OutRecord], list[FailedRecord]]:
        """Rows to records (batch rows are split here, values encoded in the row's format),
        without those already visible in Kafka."""
        out: list[OutRecord] = []
        failed: list[FailedRecord] = []
        if any(e.format is not None for _, e in rows):
            self._encoder.cluster_registry = self._registry()
        for seq, e in rows:
            start = len(out)
            if e.batch and e.raw is not None:
                self._batch_rows(seq, e, out)
            else:
                self._plain_rows(seq, e, out)
            if e.format is not None:
                out[start:] = self._encode(e, out[start:], failed)
        return out, failed

    def _encode(
        self, e: OutboxEntry, records: list[OutRecord], failed: list[FailedRecord]
    ) -> list[OutRecord]:
        assert e.format is not None
        kept = []
        for r in records:
            try:
                r.value = self._encoder.encode(e.format, r.value)
            except DecodeError as exc:
                failed.append(FailedRecord(r.seq, r.part, r.key, r.value, exc.reason))
                continue
            kept.append(r)
        return kept

    def _plain_rows(self, seq: int, e: OutboxEntry, out: list[OutRecord]) -> None:
        for i, r in enumerate(records_of(e)):
            if (seq, i) in self._visible:
                continue
            out.append(
                OutRecord(
                    topic=r.topic,
                    key=r.key,
                    value=r.value,
                    headers=[(h.key, h.value.encode()) for h in r.headers],
                    seq=seq,
                    part=i,
                )
            )

    def _batch_rows(self, seq: int, e: OutboxEntry, out: list[OutRecord]) -> None:
        """``records_of`` for a stream handler's row, with the common item shape
        ({"key": str | null, "value": ...}) converted inline: the same records, faster."""
        try:
            items = json.loads(e.raw or b"")
        except ValueError:
            items = None
        if not isinstance(items, list):
            items = None
        static = [(h.key, h.value.encode()) for h in e.headers]
        visible = self._visible
        for i, r in enumerate(items if items is not None else records_of(e)):
            if visible and (seq, i) in visible:
                continue
            if isinstance(r, dict):
                k = r.get("key")
                plain = len(r) == 1 or (len(r) == 2 and "key" in r)
                value = inline_value(r) if plain and (k is None or isinstance(k, str)) else None
                if value is not None:  # (a null value takes the general path below)
                    key = None if k is None else k.encode()
                    out.append(OutRecord(e.topic, key, value, static, seq, i))
                    continue
            rec = batch_item(e, r) if items is not None else r
            headers = [(h.key, h.value.encode()) for h in rec.headers]
            out.append(OutRecord(rec.topic, rec.key, rec.value, headers, seq, i))

    async def _step(self, loop: asyncio.AbstractEventLoop) -> bool:
        rows, cursor = self._collect()
        if not rows:
            self.cursor = cursor
            return False
        failed: list[FailedRecord] = []
        seqs = [seq for seq, _ in rows]
        if any(e.state == OutboxState.READY for _, e in rows):
            lanes = dict(self.progress.lanes)
            for seq, e in rows:
                lanes[e.lane] = seq
            progress = Progress(
                cursor - 1,
                {lane: s for lane, s in lanes.items() if s >= cursor},
                list(self._unconfirmed),
            )
            sent, failed = await loop.run_in_executor(self._ex, self._send_rows, rows, progress)
            self.progress = progress
            if sent:
                faults.reached("after-egress-commit")
                self.sent += sent
                self.transactions += 1
            self.failed += len(failed)
            self._unconfirmed += [(f.seq, f.part, f.reason) for f in failed]
        self.cursor = cursor
        self._sent = {s for s in self._sent.union(seqs) if s >= cursor}
        if self._visible:
            done = set(seqs)
            self._visible = {v for v in self._visible if v[0] >= cursor and v[0] not in done}
        self._trim(seqs, failed)
        return True
