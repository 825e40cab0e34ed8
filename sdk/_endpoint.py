"""The ASGI endpoint: discovery and invocation.

HTTP/2 requests stream both ways (bidi); HTTP/1.1 requests are request/response.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any, cast

from hypercorn.asyncio import serve as hypercorn_serve
from hypercorn.config import Config

from . import protocol as p
from ._context import (
    Context,
    ObjectContext,
    ObjectSharedContext,
    WorkflowContext,
    WorkflowSharedContext,
)
from ._errors import ProtocolError, SuspendedError, TerminalError
from ._serde import BytesSerde, SerdeError
from ._service import AnyService, HandlerDef
from ._vm import Invocation

if TYPE_CHECKING:
    from hypercorn.typing import ASGIFramework

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

SDK_VERSION = "0.1.0"
_SERVER_HEADER = (b"x-restate-server", f"sluice-sdk-python/{SDK_VERSION}".encode())
_MANIFEST_VERSIONS = (3, 2, 1)
_MANIFEST_CT = "application/vnd.restate.endpointmanifest.v{}+json"


class Endpoint:
    """An ASGI application serving a set of services to a Restate-protocol broker."""

    def __init__(self, services: list[AnyService], *, always_replay: bool | None = None) -> None:
        self.services: dict[str, AnyService] = {}
        for service in services:
            if service.name in self.services:
                raise ValueError(f"two services are named {service.name!r}")
            self.services[service.name] = service
        if always_replay is None:
            always_replay = os.environ.get("SLUICE_ALWAYS_REPLAY", "") not in ("", "0", "false")
        self.always_replay = always_replay

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        path = scope["path"].rstrip("/")
        method = scope["method"]
        segments = path.split("/")
        if method == "GET" and segments[-1] in ("discover", "discovery"):
            await self._discover(scope, send)
        elif method == "GET" and segments[-1] == "health":
            await _respond(send, 200, {"status": "ok"})
        elif len(segments) >= 4 and segments[-3] == "invoke":
            if method != "POST":
                await _respond(send, 405, {"message": "invocations are POST requests"})
                return
            await self._invoke(scope, receive, send, segments[-2], segments[-1])
        else:
            await _respond(send, 404, {"message": f"no route for {method} {scope['path']}"})

    # --- discovery -----------------------------------------------------------------------

    async def _discover(self, scope: Scope, send: Send) -> None:
        accept = _header(scope, b"accept")
        version = _pick_manifest_version(accept)
        if version is None:
            await _respond(
                send,
                415,
                {
                    "message": f"unsupported manifest versions in accept: {accept!r}; "
                    "this SDK serves v1-v3"
                },
            )
            return
        bidi = scope.get("http_version") == "2"
        body = json.dumps(self.manifest(bidi=bidi, version=version)).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", _MANIFEST_CT.format(version).encode()),
                    _SERVER_HEADER,
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    def manifest(self, *, bidi: bool, version: int = 2) -> dict[str, Any]:
        """The endpoint manifest: services, handlers, their input and output shapes."""
        return {
            "protocolMode": "BIDI_STREAM" if bidi else "REQUEST_RESPONSE",
            "minProtocolVersion": p.MIN_VERSION,
            "maxProtocolVersion": p.MAX_VERSION,
            "services": [
                {
                    "name": service.name,
                    "ty": service.kind,
                    "handlers": [_handler_manifest(h, version) for h in service.handlers.values()],
                    **(
                        {"documentation": service.description}
                        if service.description and version >= 2
                        else {}
                    ),
                }
                for service in self.services.values()
            ],
        }

    # --- invocation ----------------------------------------------------------------------

    async def _invoke(
        self, scope: Scope, receive: Receive, send: Send, service_name: str, name: str
    ) -> None:
        service = self.services.get(service_name)
        handler = service.handlers.get(name) if service else None
        if handler is None:
            await _respond(send, 404, {"message": f"unknown handler {service_name}/{name}"})
            return
        content_type = _header(scope, b"content-type")
        version = p.parse_content_type(content_type)
        if version is None or not p.MIN_VERSION <= version <= p.MAX_VERSION:
            await _respond(
                send,
                415,
                {
                    "message": f"unsupported protocol {content_type!r}; "
                    f"this SDK speaks v{p.MIN_VERSION} to v{p.MAX_VERSION}"
                },
            )
            return
        headers = [(b"content-type", p.content_type(version).encode()), _SERVER_HEADER]
        started = False

        async def flush(data: bytes) -> None:
            nonlocal started
            if not started:
                started = True
                await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": data, "more_body": True})

        vm = Invocation(
            service=service_name,
            handler=name,
            version=version,
            always_replay=self.always_replay,
            flush=flush,
        )
        bidi = scope.get("http_version") == "2"
        reader: asyncio.Task[None] | None = None
        if bidi:
            started = True
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            reader = asyncio.create_task(_read(receive, vm))
        else:
            await _read(receive, vm)  # request/response: the whole journal first
        try:
            await _run(vm, handler)
        finally:
            if not started:
                await send({"type": "http.response.start", "status": 200, "headers": headers})
            if reader is not None:
                await _drain(reader)
            await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _read(receive: Receive, vm: Invocation) -> None:
    try:
        while True:
            message = await receive()
            if message["type"] == "http.request":
                body = message.get("body", b"")
                if body:
                    vm.feed(body)
                if not message.get("more_body", False):
                    break
            else:  # http.disconnect
                break
    except (ProtocolError, p.DecodeError) as exc:
        vm.input_error = exc if isinstance(exc, ProtocolError) else ProtocolError(str(exc))
    except SuspendedError:
        pass
    vm.close_input()


async def _drain(reader: asyncio.Task[None]) -> None:
    """Let the broker close its half of an HTTP/2 stream before ours.

    Once a response is complete, hypercorn forgets the stream; a DATA frame that arrives for
    it afterwards (the broker's END_STREAM, sent when it reads our last message) fails the
    whole connection, with every other invocation on it. So the last message goes out with
    the response still open, and the response ends once the request has (bounded wait).
    """
    try:
        await asyncio.wait_for(reader, _DRAIN_TIMEOUT)
    except (TimeoutError, asyncio.CancelledError):
        reader.cancel()


_DRAIN_TIMEOUT = 5.0


async def _run(vm: Invocation, handler: HandlerDef) -> None:
    try:
        input_command = await vm.ready()
        ctx = _CONTEXTS[handler.kind, handler.service_kind](vm, input_command)
        if handler.takes_input:
            try:
                arg = handler.input_serde.deserialize(input_command.value or b"")
            except SerdeError as exc:
                raise TerminalError(
                    f"invalid input for {handler.service}/{handler.name}: {exc}", 400
                ) from exc
            result = await handler.fn(ctx, arg)
        else:
            result = await handler.fn(ctx)
        try:
            output = p.OutputCommand(value=handler.output_serde.serialize(result))
        except SerdeError as exc:
            raise TerminalError(
                f"cannot serialize the output of {handler.service}/{handler.name}: {exc}"
            ) from exc
    except TerminalError as exc:
        output = p.OutputCommand(failure=p.Failure(code=exc.status_code, message=exc.message))
    except SuspendedError:
        await vm.flush()
        return
    except Exception as exc:
        try:
            await vm.fail(exc)
        except SuspendedError:
            await vm.flush()
        return
    try:
        await vm.end(output)
    except SuspendedError:
        await vm.flush()


_CONTEXTS: dict[tuple[str | None, str], type[Context]] = {
    (None, "SERVICE"): Context,
    ("EXCLUSIVE", "VIRTUAL_OBJECT"): ObjectContext,
    ("SHARED", "VIRTUAL_OBJECT"): ObjectSharedContext,
    ("WORKFLOW", "WORKFLOW"): WorkflowContext,
    ("SHARED", "WORKFLOW"): WorkflowSharedContext,
}


def _handler_manifest(handler: HandlerDef, version: int) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": handler.name}
    if handler.kind is not None:
        entry["ty"] = handler.kind
    raw_in = isinstance(handler.input_serde, BytesSerde)
    if not handler.takes_input:
        entry["input"] = {}
    elif raw_in:
        entry["input"] = {"required": False, "contentType": "*/*"}
    else:
        entry["input"] = {"required": False, "contentType": handler.input_serde.content_type}
        schema = handler.input_serde.json_schema()
        if schema is not None:
            entry["input"]["jsonSchema"] = schema
    entry["output"] = {
        "contentType": handler.output_serde.content_type,
        "setContentTypeIfEmpty": False,
    }
    schema = handler.output_serde.json_schema()
    if schema is not None:
        entry["output"]["jsonSchema"] = schema
    if version >= 2:
        if handler.documentation:
            entry["documentation"] = handler.documentation
        if handler.metadata:
            entry["metadata"] = handler.metadata
    return entry


def _pick_manifest_version(accept: str) -> int | None:
    if not accept or "*/*" in accept or "application/json" in accept:
        return 2
    for version in _MANIFEST_VERSIONS:
        if _MANIFEST_CT.format(version) in accept:
            return version
    return None


def _header(scope: Scope, name: bytes) -> str:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return str(value.decode("latin-1"))
    return ""


async def _respond(send: Send, status: int, body: dict[str, Any]) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), _SERVER_HEADER],
        }
    )
    await send({"type": "http.response.body", "body": json.dumps(body).encode()})


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def app(*services: AnyService, always_replay: bool | None = None) -> Endpoint:
    """An ASGI app serving `services`; mount it in Starlette/FastAPI or run it under hypercorn.

    `always_replay` (default: the `SLUICE_ALWAYS_REPLAY` environment variable) suspends at
    every await that is not already complete, so that every step is replayed: a cheap way
    to prove a handler deterministic.
    """
    return Endpoint(list(services), always_replay=always_replay)


def serve(
    *services: AnyService,
    host: str = "127.0.0.1",
    port: int = 9080,
    always_replay: bool | None = None,
) -> None:
    """Serve `services` on host:port with hypercorn (HTTP/2 cleartext and HTTP/1.1)."""
    config = Config()
    config.bind = [f"{host}:{port}"]
    config.keep_alive_timeout = 75
    config.accesslog = None
    # The endpoint's messages are typed as Starlette types them (mutable mappings), hypercorn's
    # as TypedDicts: the same dicts, but neither typing accepts the other's app.
    endpoint = cast("ASGIFramework", app(*services, always_replay=always_replay))
    asyncio.run(hypercorn_serve(endpoint, config))
