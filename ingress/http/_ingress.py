"""Routes:

POST /{Service}/{handler}[/send]            POST /{Object}/{key}/{handler}[/send]
POST /{Workflow}/{id}/run[/send]            ?delay=10s (sends), idempotency-key header
GET  /restate/invocation/{id}/attach|output
GET  /restate/workflow/{name}/{id}/attach|output
POST /restate/awakeables/{id}/resolve|reject
GET  /restate/health
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

from sluice import protocol as p
from sluice.broker.httpserver import Request, Response, json_response, unavailable
from sluice.broker.ids import InvocationId, parse_awakeable_id, partition_key_of
from sluice.broker.partition._records import (
    Attach,
    AttachMode,
    Invoke,
    Kind,
    Signal,
    Sink,
    SinkKind,
)
from sluice.broker.partition.actions import Reply
from sluice.broker.partition.entries.calls import target_id

from ._validate import validate

if TYPE_CHECKING:
    from sluice.broker.server import Broker

_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "min": 60_000, "h": 3_600_000, "d": 86_400_000}
_HUMAN = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|min|m|h|d)")
_ISO = re.compile(
    r"^P(?:(\d+)D)?(?:T(?:(\d+(?:\.\d+)?)H)?(?:(\d+(?:\.\d+)?)M)?(?:(\d+(?:\.\d+)?)S)?)?$", re.I
)


def parse_delay(text: str) -> int:
    """Milliseconds from '10s', '1m 30s', '500ms' or an ISO 8601 duration ('PT10S')."""
    text = text.strip()
    m = _ISO.match(text)
    if m and text.upper() not in ("P", "PT"):
        d, h, mi, s = (float(x) if x else 0.0 for x in m.groups())
        return int(((d * 24 + h) * 60 + mi) * 60_000 + s * 1000)
    pos = 0
    total = 0.0
    for mm in _HUMAN.finditer(text):
        if text[pos : mm.start()].strip():
            raise ValueError(text)
        total += float(mm.group(1)) * _UNIT_MS[mm.group(2)]
        pos = mm.end()
    if pos == 0 or text[pos:].strip():
        raise ValueError(text)
    return int(total)


RETRY_AFTER_S = 1  # what an overloaded ingress asks clients to wait
BAD_PATH = "bad path, expected either /:service-name/:handler or /:object-name/:object-key/:handler"


def _err(status: int, message: str, headers: list[tuple[str, str]] | None = None) -> Response:
    return json_response(
        status,
        {"code": status, "message": message, "source": "ingress"},
        [("x-restate-error-source", "ingress"), *(headers or [])],
    )


class Ingress:
    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.registry = broker.registry
        self.in_flight = 0  # invocation requests admitted and not yet answered
        broker.admitted.append(lambda: self.in_flight)

    async def handle(self, req: Request) -> Response:
        seg = req.segments()
        if seg and seg[0] == "restate":
            return await self._restate(req, seg)
        if req.method != "POST":
            return _err(405, "method not allowed")
        return await self._invoke(req, seg)

    # --- invocations ---------------------------------------------------------------------

    async def _invoke(self, req: Request, seg: list[str]) -> Response:
        if len(seg) < 2:
            return _err(400, BAD_PATH)
        svc = self.registry.services.get(seg[0])
        if svc is None:
            return _err(
                404,
                f"service '{seg[0]}' not found, "
                "make sure to register the service before calling it.",
            )
        keyed = svc.ty != "SERVICE"
        rest = seg[1:]
        key = ""
        if keyed:
            if len(rest) < 2:
                return _err(
                    400,
                    f"'{svc.name}' is a {svc.ty.lower().replace('_', ' ')}: "
                    f"call /{svc.name}/{{key}}/{{handler}}",
                )
            key, rest = rest[0], rest[1:]
        send = len(rest) == 2 and rest[1] == "send"
        if len(rest) != 1 and not send:
            return _err(400, BAD_PATH)
        handler = svc.handlers.get(rest[0])
        if handler is None:
            return _err(
                404,
                f"the service '{svc.name}' exists, but the handler '{rest[0]}' was not found, "
                "check that the handler exists in the latest registered service version.",
            )
        kind = handler.kind(svc.ty)
        if (refused := self._refuse()) is not None:
            return refused
        problem = validate(handler, req.body, req.headers.get("content-type"))
        if problem is not None:
            return _err(400, f"input validation error: {problem}")
        execute_at = 0
        if "delay" in req.query:
            if not send:
                return _err(
                    400,
                    "cannot use the delay query parameter with calls. "
                    "The delay is supported only with sends",
                )
            try:
                delay = parse_delay(req.query["delay"])
            except ValueError:
                return _err(
                    400,
                    f"bad delay query parameter, must be a ISO8601 duration: {req.query['delay']}",
                )
            if delay > 0:
                import time

                execute_at = int(time.time() * 1000) + delay
        idem = req.headers.get("idempotency-key")
        if idem is not None and kind == Kind.WORKFLOW:
            return _err(
                400,
                "cannot use the idempotency key with workflow handlers. The handler "
                "invocation will already be idempotent by the workflow key itself.",
            )
        if kind == Kind.WORKFLOW or idem is not None:
            iid = target_id(kind, svc.name, handler.name, key, idem, b"")
        else:
            iid = InvocationId.generate(partition_key_of(key) if keyed else None)
        cfg = self.broker.sm.config
        retention = 0
        if kind == Kind.WORKFLOW:
            retention = cfg.workflow_retention_ms
        elif idem is not None:
            retention = svc.idempotency_retention_ms or cfg.idempotency_retention_ms
        headers = [
            p.Header(key=k, value=v)
            for k, v in req.headers.items()
            if k not in ("content-length", "host", "connection", "transfer-encoding")
        ]
        wid, fut = self.broker.waiter()
        self.broker.submit(
            Invoke(
                id=iid.raw,
                service=svc.name,
                handler=handler.name,
                key=key,
                kind=kind,
                input=req.body,
                headers=headers,
                idempotency_key=idem,
                sink=Sink(kind=SinkKind.INGRESS, waiter=wid),
                send=send,
                execute_at=execute_at,
                retention_ms=retention,
            )
        )
        self.in_flight += 1
        try:
            reply = await fut
        finally:
            self.broker.forget(wid)
            self.in_flight -= 1
        if send:
            body: dict[str, Any] = {
                "invocationId": str(InvocationId(reply.id)),
                "status": "PreviouslyAccepted" if reply.kind == "previously" else "Accepted",
            }
            return json_response(202, body)
        return self._result(reply, handler.output_content_type)

    def _refuse(self) -> Response | None:
        """A 503 with Retry-After when the broker is over its admission limit. It comes
        before anything is appended (and before the costlier checks, so that refusing stays
        cheap): retrying the same request later is safe."""
        dead = self.broker.unavailable()
        if dead is not None:
            return unavailable(dead)
        busy = self.broker.overload()
        if busy is None:
            return None
        return _err(
            503,
            f"overloaded: {busy} (admission limit {self.broker.settings.admission_limit}); "
            f"nothing was accepted, retry after {RETRY_AFTER_S}s",
            [("retry-after", str(RETRY_AFTER_S))],
        )

    def _result(self, reply: Reply, content_type: str | None = "application/json") -> Response:
        hdrs = [("x-restate-id", str(InvocationId(reply.id)))] if reply.id else []
        if reply.kind == "error":
            if reply.code == 503:  # the broker failed under this request (broker.die)
                return unavailable(reply.message)
            return _err(reply.code, reply.message)
        if reply.code:
            status = reply.code if 400 <= reply.code <= 599 else 500
            return json_response(
                status,
                {"code": reply.code, "message": reply.message, "source": "invocation"},
                [*hdrs, ("x-restate-error-source", "invocation")],
            )
        body = reply.value or b""
        return Response(200, body, hdrs, content_type if body or content_type else None)

    # --- /restate/... ---------------------------------------------------------------------

    async def _restate(self, req: Request, seg: list[str]) -> Response:
        if seg[1:2] == ["health"]:
            dead = self.broker.unavailable()
            return json_response(200, {}) if dead is None else unavailable(dead)
        if len(seg) == 4 and seg[1] == "awakeables" and seg[3] in ("resolve", "reject"):
            if req.method != "POST":
                return _err(405, "method not allowed")
            return await self._awakeable(req, seg[2], seg[3])
        if len(seg) == 4 and seg[1] == "invocation" and seg[3] in ("attach", "output"):
            try:
                iid = InvocationId.parse(seg[2])
            except ValueError as e:
                return _err(400, f"bad invocation id '{seg[2]}': {e}")
            return await self._attach(iid, seg[3])
        if len(seg) in (6, 7) and seg[1] == "invocation" and seg[-1] in ("attach", "output"):
            # /restate/invocation/{service}[/{key}]/{handler}/{idempotency-key}/attach|output
            svc = self.registry.services.get(seg[2])
            if svc is None:
                return _err(404, f"service '{seg[2]}' not found")
            key = seg[3] if len(seg) == 7 else ""
            handler = svc.handlers.get(seg[-3])
            if handler is None:
                return _err(404, f"handler '{seg[2]}/{seg[-3]}' not found")
            kind = handler.kind(svc.ty)
            iid = target_id(kind, svc.name, handler.name, key, seg[-2], b"")
            return await self._attach(iid, seg[-1])
        if len(seg) == 5 and seg[1] == "workflow" and seg[4] in ("attach", "output"):
            svc = self.registry.services.get(seg[2])
            if svc is None or svc.ty != "WORKFLOW":
                return _err(404, f"workflow '{seg[2]}' not found")
            iid = target_id(Kind.WORKFLOW, seg[2], "", seg[3], None, b"")
            return await self._attach(iid, seg[4])
        return _err(404, "not found")

    async def _attach(self, iid: InvocationId, mode: str) -> Response:
        reply = await self.broker.request(
            Attach(id=iid.raw, mode=AttachMode.ATTACH if mode == "attach" else AttachMode.OUTPUT)
        )
        return self._result(reply)

    async def _awakeable(self, req: Request, awk: str, op: str) -> Response:
        try:
            target, idx = parse_awakeable_id(awk)
        except ValueError as e:
            return _err(400, f"bad awakeable id '{awk}': {e}")
        if op == "resolve":
            cmd = Signal(target=target.raw, idx=idx, value=req.body)
        else:
            message = req.body.decode("utf-8", "replace")
            try:
                obj = json.loads(req.body) if req.body else None
                if isinstance(obj, dict) and "message" in obj:
                    message = str(obj["message"])
                elif isinstance(obj, str):
                    message = obj
            except ValueError:
                pass
            cmd = Signal(target=target.raw, idx=idx, failure=p.Failure(code=500, message=message))
        reply = await self.broker.request(cmd)
        if reply.kind == "error":
            return _err(reply.code, reply.message)
        return Response(202)
