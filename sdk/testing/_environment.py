"""A broker plus a handler service plus the registered deployment: what a scenario test runs on."""

from __future__ import annotations

import contextlib
import enum
import json
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import httpx

from ._broker import Broker, RestateServer, SluiceBroker
from ._handler import HandlerProcess
from ._process import HarnessError, tail


class Transport(enum.StrEnum):
    """How the broker talks to the handler endpoint."""

    H2 = "h2"
    """HTTP/2 cleartext with prior knowledge: bidirectional streaming."""
    HTTP1 = "http1.1"
    """HTTP/1.1: request/response, one request per attempt (registered with `use_http_11`)."""


class TestEnvironment:
    """Owns a started broker and handler process, with the deployment registered.

    Clients are created per use (`ingress_client()`, `admin_client()`) because an
    `httpx.AsyncClient` belongs to one event loop, while the environment may outlive many.
    """

    __test__ = False  # not a pytest test class, despite its name

    def __init__(
        self,
        broker: Broker,
        handler: HandlerProcess,
        *,
        transport: Transport = Transport.H2,
        timeout: float = 30.0,
    ) -> None:
        self.broker = broker
        self.handler = handler
        self.transport = Transport(transport)
        self.timeout = timeout
        self.deployment: dict[str, Any] = {}

    @property
    def ingress_url(self) -> str:
        return self.broker.ingress_url

    @property
    def admin_url(self) -> str:
        return self.broker.admin_url

    def start(self) -> None:
        self.broker.start()
        self.handler.start()
        self.register()

    def register(self) -> dict[str, Any]:
        """`POST /deployments` with the handler's URL; retried while the broker is warming up."""
        body = {"uri": self.handler.url, "use_http_11": self.transport is Transport.HTTP1}
        deadline = time.monotonic() + self.timeout
        last = ""
        with httpx.Client(base_url=self.admin_url, timeout=self.timeout) as admin:
            while time.monotonic() < deadline:
                try:
                    response = admin.post("/deployments", json=body)
                except httpx.TransportError as exc:
                    last = repr(exc)
                else:
                    if response.status_code in (200, 201):
                        self.deployment = response.json()
                        return self.deployment
                    last = f"HTTP {response.status_code}: {response.text}"
                    if response.status_code < 500 and response.status_code != 404:
                        break
                time.sleep(0.1)
        raise HarnessError(
            f"registering {self.handler.url} with {self.broker.name} failed: {last}\n"
            f"handler log:\n{tail(self.handler.log_path)}\n"
            f"broker log:\n{tail(self.broker.log_path)}"
        )

    def services(self) -> list[str]:
        """Names of the services the registered deployment offers."""
        return sorted(s["name"] for s in self.deployment.get("services", []))

    def ingress_client(self, **kwargs: Any) -> httpx.AsyncClient:
        kwargs.setdefault("timeout", self.timeout)
        return httpx.AsyncClient(base_url=self.ingress_url, **kwargs)

    def admin_client(self, **kwargs: Any) -> httpx.AsyncClient:
        kwargs.setdefault("timeout", self.timeout)
        return httpx.AsyncClient(base_url=self.admin_url, **kwargs)

    async def query(self, sql: str) -> list[dict[str, Any]]:
        """Rows of the admin API's SQL introspection (`POST /query`), as JSON objects."""
        async with self.admin_client() as admin:
            response = await admin.post(
                "/query", json={"query": sql}, headers={"accept": "application/json"}
            )
        if response.status_code != 200:
            raise HarnessError(f"query {sql!r} failed: HTTP {response.status_code} {response.text}")
        rows: list[dict[str, Any]] = response.json()["rows"]
        return rows

    async def cancel_invocation(self, invocation_id: str) -> httpx.Response:
        async with self.admin_client() as admin:
            return await admin.patch(f"/invocations/{invocation_id}/cancel")

    async def kill_invocation(self, invocation_id: str) -> httpx.Response:
        async with self.admin_client() as admin:
            return await admin.patch(f"/invocations/{invocation_id}/kill")

    def logs(self) -> str:
        """Both logs' tails, for assertion messages."""
        return (
            f"--- handler ({self.handler.log_path}) ---\n{tail(self.handler.log_path, 60)}\n"
            f"--- {self.broker.name} ({self.broker.log_path}) ---\n"
            f"{tail(self.broker.log_path, 60)}"
        )

    def close(self) -> None:
        try:
            self.handler.close()
        finally:
            self.broker.close()

    def __enter__(self) -> TestEnvironment:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


BrokerKind = Literal["restate-server", "sluice"]


def make_broker(kind: BrokerKind, **kwargs: Any) -> Broker:
    if kind == "restate-server":
        return RestateServer(**kwargs)
    if kind == "sluice":
        return SluiceBroker(**kwargs)
    raise ValueError(f"unknown broker {kind!r}: expected 'restate-server' or 'sluice'")


@contextlib.contextmanager
def harness(
    target: str,
    *,
    broker: BrokerKind = "restate-server",
    transport: Transport | str = Transport.H2,
    always_replay: bool = False,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> Iterator[TestEnvironment]:
    """Start a broker and the ASGI app `target` (`module:attr`), register it, yield the environment.

    ```python
    with harness("myapp:app", transport="http1.1") as env:
        async with env.ingress_client() as ingress:
            r = await ingress.post("/Greeter/greet", json="Ada")
    ```
    """
    environment = TestEnvironment(
        make_broker(broker),
        HandlerProcess(target, env=env, always_replay=always_replay, cwd=cwd),
        transport=Transport(transport),
    )
    with environment:
        yield environment


def read_json_lines(path: Path) -> list[Any]:
    """Records a handler appended to a side-effect log, one JSON document per line."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
