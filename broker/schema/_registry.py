from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from sluice.broker.partition._records import Kind

SERVICE_TYPES = ("SERVICE", "VIRTUAL_OBJECT", "WORKFLOW")


@dataclass(slots=True)
class HandlerInfo:
    name: str
    ty: str | None = None  # EXCLUSIVE, SHARED, WORKFLOW (None: the service type's default)
    input: dict[str, Any] | None = None
    output: dict[str, Any] | None = None
    documentation: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)  # manifest v2+: free-form

    def kind(self, service_ty: str) -> int:
        if service_ty == "SERVICE":
            return Kind.SERVICE
        if service_ty == "WORKFLOW":
            return Kind.WORKFLOW if self.ty == "WORKFLOW" else Kind.SHARED
        return Kind.SHARED if self.ty == "SHARED" else Kind.EXCLUSIVE

    @property
    def output_content_type(self) -> str | None:
        out = self.output or {}
        if out.get("setContentTypeIfEmpty") is False and not out:
            return None
        return str(out.get("contentType", "application/json")) if out else "application/json"

    @property
    def input_schema(self) -> dict[str, Any] | None:
        schema = (self.input or {}).get("jsonSchema")
        return schema if isinstance(schema, dict) else None


@dataclass(slots=True)
class ServiceInfo:
    name: str
    ty: str
    handlers: dict[str, HandlerInfo]
    deployment_id: str
    revision: int = 1
    documentation: str | None = None
    idempotency_retention_ms: int | None = None
    inactivity_timeout_ms: int | None = None
    abort_timeout_ms: int | None = None
    # Manifest v4 retry policy; None: the broker's default.
    retry: dict[str, Any] | None = None
    lazy_state: bool = False  # manifest v3 enableLazyState: no state in StartMessage

    def to_json(self) -> dict[str, Any]:
        """The admin API's service metadata, shaped like restate-server's."""
        return {
            "name": self.name,
            "ty": "VirtualObject" if self.ty == "VIRTUAL_OBJECT" else self.ty.title(),
            "handlers": [
                {
                    "name": h.name,
                    "ty": (h.ty or ("Exclusive" if self.ty == "VIRTUAL_OBJECT" else None))
                    and (h.ty or "EXCLUSIVE").title(),
                    "input_description": "JSON" if h.input else "none",
                    "output_description": "JSON" if h.output else "none",
                    "input_json_schema": h.input_schema,
                    "documentation": h.documentation,
                    "metadata": h.metadata,
                }
                for h in self.handlers.values()
            ],
            "deployment_id": self.deployment_id,
            "revision": self.revision,
            "public": True,
            "documentation": self.documentation,
            "idempotency_retention": _fmt_ms(self.idempotency_retention_ms or 86_400_000),
        }


def _fmt_ms(ms: int) -> str:
    if ms % 3_600_000 == 0:
        return f"{ms // 3_600_000}h"
    if ms % 1000 == 0:
        return f"{ms // 1000}s"
    return f"{ms}ms"


@dataclass(slots=True)
class Deployment:
    id: str
    uri: str
    use_http_11: bool
    protocol_version: int
    services: list[dict[str, Any]]  # the manifest's services, as discovered
    created_at: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    protocol_mode: str = "BIDI_STREAM"
    manifest_version: int = 0

    def to_json(self) -> dict[str, Any]:
        """The admin API's deployment shape."""
        return {
            "id": self.id,
            "uri": self.uri,
            "protocol_type": "RequestResponse"
            if self.protocol_mode == "REQUEST_RESPONSE"
            else "BidiStream",
            "http_version": "HTTP/1.1" if self.use_http_11 else "HTTP/2.0",
            "min_protocol_version": self.protocol_version,
            "max_protocol_version": self.protocol_version,
            "additional_headers": self.headers,
            "created_at": self.created_at,
            "services": [{"name": s["name"], "revision": 1} for s in self.services],
        }

    def to_json_bytes(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode()

    @classmethod
    def from_json_bytes(cls, data: bytes) -> Deployment:
        return cls(**json.loads(data))


class Registry:
    """Derived, in memory, from the schema table; changed only through the log."""

    def __init__(self) -> None:
        self.deployments: dict[str, Deployment] = {}
        self.services: dict[str, ServiceInfo] = {}
        self._revisions: dict[str, int] = {}

    def upsert(self, dep: Deployment) -> None:
        self.deployments[dep.id] = dep
        self._rebuild()

    def remove(self, deployment_id: str) -> bool:
        found = self.deployments.pop(deployment_id, None) is not None
        self._rebuild()
        return found

    def _rebuild(self) -> None:
        services: dict[str, ServiceInfo] = {}
        for dep in sorted(self.deployments.values(), key=lambda d: (d.created_at, d.id)):
            for svc in dep.services:
                handlers = {
                    h["name"]: HandlerInfo(
                        name=h["name"],
                        ty=h.get("ty"),
                        input=h.get("input"),
                        output=h.get("output"),
                        documentation=h.get("documentation"),
                        metadata={str(k): str(v) for k, v in (h.get("metadata") or {}).items()},
                    )
                    for h in svc.get("handlers", [])
                }
                prev = services.get(svc["name"])
                services[svc["name"]] = ServiceInfo(
                    name=svc["name"],
                    ty=svc.get("ty", "SERVICE"),
                    handlers=handlers,
                    deployment_id=dep.id,
                    revision=(prev.revision + 1) if prev else 1,
                    documentation=svc.get("documentation"),
                    idempotency_retention_ms=svc.get("idempotencyRetention"),
                    inactivity_timeout_ms=svc.get("inactivityTimeout"),
                    abort_timeout_ms=svc.get("abortTimeout"),
                    lazy_state=bool(svc.get("enableLazyState", False)),
                    retry={
                        k: svc[k]
                        for k in (
                            "retryPolicyInitialInterval",
                            "retryPolicyMaxInterval",
                            "retryPolicyMaxAttempts",
                            "retryPolicyExponentiationFactor",
                            "retryPolicyOnMaxAttempts",
                        )
                        if svc.get(k) is not None
                    }
                    or None,
                )
        self.services = services

    def find_by_uri(self, uri: str) -> Deployment | None:
        for dep in self.deployments.values():
            if dep.uri.rstrip("/") == uri.rstrip("/"):
                return dep
        return None
