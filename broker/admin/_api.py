from __future__ import annotations

import json
import os
import time
from typing import TYPE_CHECKING, Any

from sluice.broker.httpserver import Request, Response, json_response, unavailable
from sluice.broker.ids import InvocationId
from sluice.broker.partition._context import key_prefix
from sluice.broker.partition._records import Manage, Phase, SchemaUpdate, Status, Terminate
from sluice.broker.schema import Deployment, DiscoveryError, discover

from ._activity import activity
from ._openapi import OPENAPI
from ._pace import JsonRows, paced
from ._query import QueryError, run_query

if TYPE_CHECKING:
    from sluice.broker.server import Broker

_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"


def _deployment_id() -> str:
    n = int.from_bytes(os.urandom(16), "big")
    out = []
    while n:
        n, r = divmod(n, 36)
        out.append(_ALPHABET[r])
    return "dp_" + "".join(out)[:26]


def _err(status: int, message: str) -> Response:
    return json_response(status, {"message": message})


class AdminApi:
    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.registry = broker.registry

    async def handle(self, req: Request) -> Response:
        seg = req.segments()
        m = req.method
        try:
            if seg == ["health"]:
                dead = self.broker.unavailable()
                if dead is not None:
                    return unavailable(dead)
                log = {
                    **self.broker.log.status(),
                    "applied": self.broker.processor.applied,
                    "snapshot": self.broker.snapshot_lsn(),
                    "snapshot_error": self.broker.snapshot_error,
                }
                return json_response(200, {"log": log})
            if seg == ["openapi"]:
                return json_response(200, OPENAPI)
            if seg and seg[0] == "deployments":
                return await self._deployments(req, m, seg[1:])
            if seg and seg[0] == "services":
                return self._services(m, seg[1:])
            if seg and seg[0] == "invocations":
                return await self._invocations(req, m, seg[1:])
            if len(seg) == 3 and seg[0] == "state" and m == "GET":
                return self._state(seg[1], seg[2])
            if seg == ["query"] and m == "POST":
                return await self._query(req)
            if seg and seg[0] in ("kafka-clusters", "subscriptions", "metrics"):
                return await self.broker.subscriptions.admin(req, seg)  # subscriptions/
            if seg == ["activity"] and m == "GET":  # _activity.py: the work left, and "quiet"
                return json_response(200, activity(self.broker))
            if seg == ["egress"] and m == "GET":  # broker/egress.py: one row per sink
                return json_response(200, {"sinks": self.broker.egress.to_json()})
        except (ValueError, KeyError) as e:
            return _err(400, f"bad request: {e}")
        except RecursionError:  # json.loads of a body nested deeper than ~1,000 levels
            return _err(400, "bad request: the body is JSON nested too deeply")
        return _err(404, "not found")

    async def _query(self, req: Request) -> Response:
        try:
            body = json.loads(req.body or b"{}")
            if not isinstance(body, dict):
                raise ValueError("not an object")
            sql = body.get("query", "")
            if not isinstance(sql, str):
                raise ValueError(f"'query' is {type(sql).__name__}, not a string")
        except ValueError as e:
            return _err(400, f'the body must be JSON {{"query": "SELECT ..."}}: {e}')
        out = JsonRows("rows")
        try:
            async for row in run_query(self.broker.store, sql, partitions=self.broker.partitions):
                out.add(row)
        except QueryError as e:
            return _err(400, str(e))
        return out.response()

    # --- deployments ---------------------------------------------------------------------

    async def _deployments(self, req: Request, m: str, rest: list[str]) -> Response:
        if not rest and m == "GET":
            return json_response(
                200, {"deployments": [d.to_json() for d in self.registry.deployments.values()]}
            )
        if not rest and m == "POST":
            return await self._register(req)
        if len(rest) == 1:
            dep = self.registry.deployments.get(rest[0])
            if dep is None:
                return _err(404, f"deployment '{rest[0]}' not found")
            if m == "GET":
                return json_response(200, dep.to_json())
            if m == "DELETE":
                reply = await self.broker.request(SchemaUpdate(remove_id=dep.id))
                if reply.kind == "error":
                    return _err(reply.code, reply.message)
                return Response(202)
        return _err(405, "method not allowed")

    async def _register(self, req: Request) -> Response:
        try:
            body = json.loads(req.body or b"{}")
        except ValueError as e:
            return _err(400, f"the body is not valid JSON: {e}")
        if not isinstance(body, dict):
            return _err(400, 'POST /deployments takes a JSON object: {"uri": "http://host:port"}')
        uri = body.get("uri")
        if not isinstance(uri, str) or not uri:
            return _err(400, 'missing \'uri\': POST /deployments takes {"uri": "http://host:port"}')
        use_h1 = bool(body.get("use_http_11", False))
        force = bool(body.get("force", True))
        headers = body.get("additional_headers") or {}
        try:
            manifest, version, mversion = await discover(uri, use_http_11=use_h1, headers=headers)
        except DiscoveryError as e:
            return _err(e.status, str(e))
        services = manifest["services"]
        existing = self.registry.find_by_uri(uri)
        if existing is not None and not force and existing.services != services:
            return _err(
                409,
                f"a deployment with uri {uri} already exists ({existing.id}) with different "
                'services; register with "force": true to overwrite it',
            )
        for svc in services:
            current = self.registry.services.get(svc["name"])
            if current is not None and current.ty != svc.get("ty", "SERVICE") and not force:
                return _err(409, f"service '{svc['name']}' changes type from {current.ty}")
        dep = Deployment(
            id=existing.id if existing is not None else _deployment_id(),
            uri=uri,
            use_http_11=use_h1,
            protocol_version=version,
            services=services,
            created_at=existing.created_at if existing is not None else int(time.time() * 1000),
            headers=headers,
            protocol_mode=str(manifest.get("protocolMode", "BIDI_STREAM")),
            manifest_version=mversion,
        )
        reply = await self.broker.request(SchemaUpdate(deployment_json=dep.to_json_bytes()))
        if reply.kind == "error":
            return _err(reply.code, reply.message)
        out = [self.registry.services[s["name"]].to_json() for s in services]
        return json_response(201, {"id": dep.id, "services": out})

    # --- services ------------------------------------------------------------------------

    def _services(self, m: str, rest: list[str]) -> Response:
        if m != "GET":
            return _err(405, "method not allowed")
        if not rest:
            return json_response(
                200, {"services": [s.to_json() for s in self.registry.services.values()]}
            )
        svc = self.registry.services.get(rest[0])
        if svc is None:
            return _err(404, f"service '{rest[0]}' not found")
        if len(rest) == 1:
            return json_response(200, svc.to_json())
        if rest[1:] == ["handlers"]:
            return json_response(200, {"handlers": svc.to_json()["handlers"]})
        return _err(404, "not found")

    # --- invocations ---------------------------------------------------------------------

    async def _invocations(self, req: Request, m: str, rest: list[str]) -> Response:
        if not rest and m == "GET":
            return await self._list(req)
        if not rest:
            return _err(405, "method not allowed")
        try:
            iid = InvocationId.parse(rest[0])
        except ValueError as e:
            return _err(400, f"bad invocation id '{rest[0]}': {e}")
        if len(rest) == 1 and m == "GET":
            raw = self.broker.store.get("status", iid.raw)
            if raw is None:
                return _err(404, "invocation not found")
            return json_response(200, _status_json(Status.decode(raw), self.broker.partitions))
        op = rest[1] if len(rest) == 2 else req.query.get("mode", "cancel" if m == "DELETE" else "")
        action = {
            "cancel": Terminate.CANCEL,
            "kill": Terminate.KILL,
            "purge": Terminate.PURGE,
            "resume": Terminate.RESUME,
        }.get(op)
        if action is None or m not in ("PATCH", "DELETE", "POST"):
            return _err(404, "not found")
        reply = await self.broker.request(Manage(id=iid.raw, action=action))
        if reply.kind == "error":
            return _err(reply.code, reply.message)
        return Response(202) if op != "purge" else Response(200)

    async def _list(self, req: Request) -> Response:
        want_status = req.query.get("status")
        want_service = req.query.get("service")
        try:
            limit = int(req.query.get("limit", "1000"))
        except ValueError:
            return _err(400, f"bad limit '{req.query['limit']}': expected an integer")
        out = JsonRows("invocations")
        async for _, raw in paced(self.broker.store.scan("status", b"")):
            st = Status.decode(raw)
            j = _status_json(st, self.broker.partitions)
            if want_status and j["status"] != want_status:
                continue
            if want_service and st.service != want_service:
                continue
            out.add(j)
            if len(out) >= limit:
                break
        return out.response()

    def _state(self, service: str, key: str) -> Response:
        prefix = key_prefix(service, key)
        state: dict[str, Any] = {}
        for k, v in self.broker.store.scan("state", prefix):
            name = k[len(prefix) :].decode("utf-8", "replace")
            try:
                state[name] = json.loads(v)
            except ValueError:
                state[name] = v.decode("utf-8", "replace")
        return json_response(200, {"service": service, "key": key, "state": state})


def _status_json(st: Status, partitions: int) -> dict[str, Any]:
    iid = InvocationId(st.id)
    return {
        "id": str(iid),
        "partition": iid.partition_key % partitions,
        "target": f"{st.service}/{st.key + '/' if st.key else ''}{st.handler}",
        "service": st.service,
        "handler": st.handler,
        "key": st.key,
        "status": Phase.NAMES.get(st.phase, "unknown"),
        "epoch": st.epoch,
        "retry_count": st.retry_count,
        "last_failure": st.last_failure or None,
        "idempotency_key": st.idempotency_key,
        "deployment_id": st.deployment_id or None,
        "journal_length": st.journal_len,
        "created_at": st.created_at,
        "modified_at": st.modified_at,
    }
