"""The controller: keeps the running consumers equal to the declared subscriptions.

Clusters and subscriptions live in two tables, changed only through the log (admin API,
CLI and declarations file all append a SubscriptionUpdate). After each change, and after a
deployment change (a handler may have appeared), ``reconcile`` starts, stops, restarts,
pauses or resumes consumers so that they match the tables.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from sluice.broker.httpserver import Request, Response, json_response
from sluice.broker.partition import actions as a
from sluice.broker.partition._records import SubscriptionUpdate
from sluice.broker.partition.lifecycle.kafka import subscription_prefix
from sluice.ingress.kafka import DeadLetterSender, PartitionStats, SubscriptionConsumer

from ._declarations import load_declarations
from ._models import KafkaCluster, Subscription

if TYPE_CHECKING:
    from sluice.broker.server import Broker

log = logging.getLogger("sluice.subscriptions")


def _err(status: int, message: str) -> Response:
    return json_response(status, {"message": message})


class Controller:
    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.consumers: dict[str, SubscriptionConsumer] = {}
        self.waiting: dict[str, str] = {}  # subscription -> why it does not run
        self.dead_lettered: dict[tuple[str, int], int] = {}
        self._stats: dict[str, dict[int, PartitionStats]] = {}
        self.dlq = DeadLetterSender(broker, self._lookup, self._count_dead_letter)
        self._lock = asyncio.Lock()

    # --- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        path = self.broker.settings.declarations
        if path is not None:
            await self._apply_file(Path(path))
        hooks = self.broker.action_hooks
        hooks[a.SubscriptionsChanged] = lambda _, __: self.reconcile()
        hooks[a.SchemaChanged] = lambda _, __: self.reconcile()
        hooks[a.KafkaDone] = lambda act, _: self._done(act)
        self.broker.admitted.append(lambda: sum(c.work() for c in self.consumers.values()))
        hooks[a.DeadLetterPending] = lambda act, part: self.dlq.add(part.index, act.key)
        self.dlq.start()
        self.reconcile()

    async def stop(self) -> None:
        for name in list(self.consumers):
            await self.consumers.pop(name).stop()
        await self.dlq.stop()

    async def _apply_file(self, path: Path) -> None:
        decl = load_declarations(path)  # DeclarationError: FILE:LINE: reason, before anything runs
        now = int(time.time() * 1000)
        for c in decl.kafka_clusters:
            known = self.clusters().get(c.name)
            if known is None or known.properties != c.properties:
                c.created_at = known.created_at if known else now
                await self._put("kafka_clusters", c.name, c.model_dump_json().encode())
        declared = set()
        for s in decl.subscriptions:
            declared.add(s.name)
            s.origin = "file"
            old = self.subscriptions().get(s.name)
            if old is None or old.definition() != s.definition():
                s.created_at = old.created_at if old else now
                if old is not None:
                    s.paused = old.paused
                await self._put("subscriptions", s.name, s.model_dump_json().encode())
        for name, prev in self.subscriptions().items():
            if prev.origin == "file" and name not in declared:
                await self._put("subscriptions", name, b"")

    async def _put(self, table: str, name: str, row: bytes, reset: bytes = b"") -> None:
        """Change a row in every partition (on physical partitions each ingests some source
        partitions, keeps their positions, and sends to the clusters), the first one last:
        its change is what starts, changes or stops consumers."""
        for part in [*self.broker.parts[1:], self.broker.parts[0]]:
            reply = await self.broker.request(
                SubscriptionUpdate(table=table, name=name, row=row, reset=reset), part
            )
            if reply.kind == "error":
                raise RuntimeError(reply.message)

    # --- the tables ----------------------------------------------------------------------

    def clusters(self) -> dict[str, KafkaCluster]:
        out = {}
        for k, v in self.broker.store.scan("kafka_clusters", b""):
            out[k.decode()] = KafkaCluster.model_validate_json(v)
        return out

    def subscriptions(self) -> dict[str, Subscription]:
        out = {}
        for k, v in self.broker.store.scan("subscriptions", b""):
            out[k.decode()] = Subscription.model_validate_json(v)
        return out

    def _find(self, ref: str) -> Subscription | None:
        subs = self.subscriptions()
        if ref in subs:
            return subs[ref]
        return next((s for s in subs.values() if s.id == ref), None)

    def _lookup(self, name: str, cluster: str) -> KafkaCluster | None:
        """The cluster of a dead letter: its subscription's, else the one the row names."""
        raw = self.broker.store.get("subscriptions", name.encode())
        if raw is not None:
            cluster = Subscription.model_validate_json(raw).cluster
        raw = self.broker.store.get("kafka_clusters", cluster.encode()) if cluster else None
        return KafkaCluster.model_validate_json(raw) if raw is not None else None

    def _kind(self, sub: Subscription) -> tuple[int | None, str]:
        svc = self.broker.registry.services.get(sub.service)
        if svc is None:
            return None, f"service '{sub.service}' is not registered"
        h = svc.handlers.get(sub.handler)
        if h is None:
            return None, f"service '{sub.service}' has no handler '{sub.handler}'"
        return h.kind(svc.ty), ""

    def _effective(self, sub: Subscription) -> Subscription:
        """What the consumer runs: the subscription, with its handler's declared batching
        where the subscription sets none (a re-registered handler may change it)."""
        svc = self.broker.registry.services.get(sub.service)
        h = svc.handlers.get(sub.handler) if svc is not None else None
        return sub.with_handler_batch(h.metadata) if h is not None else sub

    # --- reconciliation ------------------------------------------------------------------

    def reconcile(self) -> None:
        asyncio.get_running_loop().create_task(self._reconcile())

    async def _reconcile(self) -> None:
        async with self._lock:  # one pass at a time: a pass awaits consumers stopping
            await self._reconcile_once()

    async def _reconcile_once(self) -> None:
        subs = self.subscriptions()
        clusters = self.clusters()
        self.waiting = {}
        effective: dict[str, Subscription] = {}
        for name, sub in subs.items():
            try:
                effective[name] = self._effective(sub)
            except ValueError as e:
                self.waiting[name] = str(e)
        for name in list(self.consumers):
            c = self.consumers[name]
            want = effective.get(name)
            cluster = clusters.get(want.cluster) if want is not None else None
            kind, _ = self._kind(want) if want is not None else (None, "")
            if (
                want is None
                or cluster is None
                or kind != c.kind
                or want.definition() != c.sub.definition()
                or cluster.properties != c.cluster.properties
                or (want.serde == "avro" and cluster.schema_registry != c.cluster.schema_registry)
            ):
                del self.consumers[name]
                await c.stop()
        for name, sub in effective.items():
            cluster = clusters.get(sub.cluster)
            if cluster is None:
                self.waiting[name] = f"kafka cluster '{sub.cluster}' is not defined"
                continue
            kind, why = self._kind(sub)
            if kind is None:
                self.waiting[name] = why
                continue
            running = self.consumers.get(name)
            if running is None:
                try:
                    running = SubscriptionConsumer(self.broker, sub, cluster, kind)
                except ValueError as e:  # e.g. Avro, and the cluster's registry was removed
                    self.waiting[name] = str(e)
                    continue
                running.partitions = self._stats.setdefault(name, {})
                self.consumers[name] = running
                running.start()
            if running._paused != sub.paused:
                running.set_paused(sub.paused)
            running.sub = sub

    def _done(self, act: a.KafkaDone) -> None:
        c = self.consumers.get(act.subscription)
        if c is not None:
            c.done()

    def _count_dead_letter(self, sub: str, partition: int) -> None:
        stats = self._stats.get(sub, {}).get(partition)
        if stats is not None:
            stats.dead_lettered += 1

    # --- admin API -----------------------------------------------------------------------

    async def admin(self, req: Request, seg: list[str]) -> Response:
        try:
            if seg[0] == "kafka-clusters":
                return await self._clusters_api(req, seg[1:])
            if seg[0] == "subscriptions":
                return await self._subscriptions_api(req, seg[1:])
            if seg == ["metrics"] and req.method == "GET":
                return Response(200, self.prometheus().encode(), [], "text/plain; version=0.0.4")
        except ValidationError as e:
            err = e.errors()[0]
            where = ".".join(str(x) for x in err["loc"])
            msg = err["msg"].removeprefix("Value error, ")
            return _err(400, f"{where}: {msg}" if where else msg)
        except ValueError as e:
            return _err(400, str(e))
        return _err(404, "not found")

    def _body(self, req: Request) -> dict[str, Any]:
        try:
            body = json.loads(req.body or b"{}")
        except ValueError as e:
            raise ValueError(f"the body is not valid JSON: {e}") from None
        if not isinstance(body, dict):
            raise ValueError("the body must be a JSON object")
        return body

    async def _clusters_api(self, req: Request, rest: list[str]) -> Response:
        m = req.method
        clusters = self.clusters()
        if not rest:
            if m == "GET":
                return json_response(200, {"clusters": [c.public() for c in clusters.values()]})
            if m == "POST":
                body = self._body(req)
                c = KafkaCluster.model_validate({**body, "created_at": int(time.time() * 1000)})
                if c.name in clusters:
                    return _err(
                        409,
                        f"kafka cluster '{c.name}' already exists; PATCH it to change properties",
                    )
                await self._put("kafka_clusters", c.name, c.model_dump_json().encode())
                return json_response(201, c.public())
            return _err(405, "method not allowed")
        found = clusters.get(rest[0])
        if found is None:
            return _err(404, f"kafka cluster '{rest[0]}' not found")
        c = found
        if m == "GET":
            subs = [s.public() for s in self.subscriptions().values() if s.cluster == c.name]
            return json_response(200, {**c.public(), "subscriptions": subs})
        if m == "PATCH":
            body = self._body(req)
            fields = {k: body[k] for k in ("properties", "schema_registry") if k in body}
            c = KafkaCluster.model_validate({**c.model_dump(), **fields})
            await self._put("kafka_clusters", c.name, c.model_dump_json().encode())
            return json_response(200, c.public())
        if m == "DELETE":
            users = [s.name for s in self.subscriptions().values() if s.cluster == c.name]
            if users:
                return _err(
                    409, f"kafka cluster '{c.name}' is used by subscriptions: {', '.join(users)}"
                )
            await self._put("kafka_clusters", c.name, b"")
            return Response(202)
        return _err(405, "method not allowed")

    async def _subscriptions_api(self, req: Request, rest: list[str]) -> Response:
        m = req.method
        if not rest:
            if m == "GET":
                return json_response(
                    200, {"subscriptions": [self._public(s) for s in self.subscriptions().values()]}
                )
            if m == "POST":
                return await self._create(self._body(req))
            return _err(405, "method not allowed")
        sub = self._find(rest[0])
        if sub is None:
            return _err(404, f"subscription '{rest[0]}' not found")
        if len(rest) == 1 and m == "GET":
            return json_response(200, self._public(sub))
        if len(rest) == 1 and m == "DELETE":
            await self._put("subscriptions", sub.name, b"")
            return Response(202)
        if len(rest) == 2 and rest[1] in ("pause", "resume") and m in ("POST", "PATCH"):
            sub.paused = rest[1] == "pause"
            await self._put("subscriptions", sub.name, sub.model_dump_json().encode())
            running = self.consumers.get(sub.name)
            if running is not None and not sub.paused:
                running.resume_halted()  # (stopped on a recreated topic: start over)
            return json_response(200, self._public(sub))
        return _err(405, "method not allowed")

    async def _create(self, body: dict[str, Any]) -> Response:
        sub, reset = Subscription.from_request(body)
        if sub.cluster not in self.clusters():
            return _err(
                400,
                f"kafka cluster '{sub.cluster}' not found: create it first (POST /kafka-clusters)",
            )
        kind, why = self._kind(sub)
        if kind is None:
            return _err(400, f"cannot subscribe to {sub.sink}: {why}")
        if sub.serde == "avro":
            sub.input_serde(self.clusters()[sub.cluster])  # ValueError: no registry anywhere
        out_cluster = self.clusters().get(sub.output_cluster or sub.cluster)
        if sub.output_cluster and out_cluster is None:
            return _err(400, f"output_cluster: kafka cluster '{sub.output_cluster}' not found")
        if sub.output_serde == "avro" and not (
            sub.schema_registry or (out_cluster and out_cluster.schema_registry)
        ):
            return _err(
                400,
                "output_serde 'avro' needs a schema registry: set schema_registry on the "
                f"subscription or on kafka cluster '{sub.output_cluster or sub.cluster}'",
            )
        old = self.subscriptions().get(sub.name)
        if old is not None:
            if old.definition() == sub.definition() and not reset:
                return json_response(201, self._public(old))
            return _err(
                409,
                f"subscription '{sub.name}' exists with another definition; delete it first",
            )
        sub.created_at = int(time.time() * 1000)
        await self._put(
            "subscriptions",
            sub.name,
            sub.model_dump_json().encode(),
            reset=subscription_prefix(sub.name) if reset else b"",
        )
        return json_response(201, self._public(sub))

    def _public(self, sub: Subscription) -> dict[str, Any]:
        out = sub.public()
        c = self.consumers.get(sub.name)
        if c is not None:
            out["status"] = c.to_json()
        else:
            out["status"] = {"state": self.waiting.get(sub.name, "starting"), "partitions": []}
        return out

    # --- metrics -------------------------------------------------------------------------

    def prometheus(self) -> str:
        lines: list[str] = []
        series = (
            (
                "sluice_kafka_records_ingested_total",
                "counter",
                "records written to the log",
                "ingested",
            ),
            ("sluice_kafka_consumer_lag", "gauge", "log end offset minus durable position", "lag"),
            (
                "sluice_kafka_records_dead_lettered_total",
                "counter",
                "records sent to the dead-letter topic",
                "dead_lettered",
            ),
            (
                "sluice_kafka_records_failed_total",
                "counter",
                "undecodable records recorded as failed invocations",
                "failed",
            ),
            (
                "sluice_kafka_records_skipped_total",
                "counter",
                "records deleted by retention before they were read",
                "skipped",
            ),
            (
                "sluice_kafka_topic_resets_total",
                "counter",
                "times the topic was found recreated and the partition started over",
                "resets",
            ),
        )
        for metric, ty, help_, attr in series:
            lines.append(f"# HELP {metric} {help_}")
            lines.append(f"# TYPE {metric} {ty}")
            for name, parts in sorted(self._stats.items()):
                c = self.consumers.get(name)
                topic = c.sub.topic if c is not None else ""
                for n, s in sorted(parts.items()):
                    labels = f'subscription="{name}",topic="{topic}",partition="{n}"'
                    lines.append(f"{metric}{{{labels}}} {getattr(s, attr)}")
        lines.append(
            "# HELP sluice_kafka_in_flight invocations created from Kafka and not finished"
        )
        lines.append("# TYPE sluice_kafka_in_flight gauge")
        for name, c in sorted(self.consumers.items()):
            lines.append(f'sluice_kafka_in_flight{{subscription="{name}"}} {c.in_flight}')
        return "\n".join(lines) + "\n"
