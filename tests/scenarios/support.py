"""Helpers the scenario tests share: polling, one-way sends, attaching to results."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx

import sluice
from sluice.testing import TestEnvironment, Transport, read_json_lines

REPO = Path(__file__).resolve().parents[2]

# The scenario matrix runs every SDK on every broker. A missing half is an error that names
# it, never a smaller matrix: a case left out of collection reads as a pass.
_MISSING = [
    what
    for present, what in (
        (hasattr(sluice, "app"), "the Sluice SDK's sluice.app (its example services import it)"),
        (
            (REPO / "broker" / "__main__.py").is_file(),
            "the Sluice broker's entry point broker/__main__.py (python -m sluice.broker server)",
        ),
    )
    if not present
]
if _MISSING:
    raise ImportError(
        "the scenario matrix (sluice and restate-sdk on sluice and restate-server) cannot be"
        " built; missing: " + "; ".join(_MISSING)
    )

SDKS = ["restate-sdk", "sluice"]
BROKERS = ["restate-server", "sluice"]  # the kinds sluice.testing.make_broker starts
# The matrix adds the Sluice broker with its log in Kafka (Tansu). The log is independent of
# the SDK and the transport, so it runs two of their combinations, not all of them.
# And on physical partitions (a processor, tables and a Kafka partition each): calls,
# signals and attaches between invocations of different partitions go through the shuffle.
MATRIX_BROKERS = [*BROKERS, "sluice-kafka-log", "sluice-partitioned"]
KAFKA_LOG_SDKS = {("sluice", Transport.H2, False), ("restate-sdk", Transport.HTTP1, False)}

# Log lines after which a restate-server can no longer serve the rest of a parameter set.
BROKER_BREAKAGE = ("Partition processor exited unexpectedly", "panicked at")


@dataclass(frozen=True)
class Setup:
    """One parameter set: which SDK's services, over which transport, on which broker."""

    sdk: str
    transport: Transport
    always_replay: bool
    broker: str

    @property
    def id(self) -> str:
        sdk_name = "restate-sdk" if self.sdk == "restate-sdk" else "sluice-sdk"
        replay = "always-replay" if self.always_replay else "normal"
        broker = {
            "sluice": "sluice-broker",
            "sluice-kafka-log": "sluice-broker-kafka-log",
            "sluice-partitioned": "sluice-broker-partitioned",
        }
        return (
            f"{sdk_name}-{self.transport.value}-{replay}-on-{broker.get(self.broker, self.broker)}"
        )


@dataclass
class Scenario:
    """A running parameter set: the environment, and the handler's side-effect log."""

    setup: Setup
    env: TestEnvironment
    effects_file: Path

    def broker_log_size(self) -> int:
        path = self.env.broker.log_path
        return path.stat().st_size if path.exists() else 0

    def broker_breakage(self, since: int) -> str | None:
        """Why the broker can no longer serve this parameter set, if it cannot: it exited, or
        (restate-server) a partition processor crashed, which stalls every key it owns."""
        if not self.env.broker.running():
            return f"{self.env.broker.name} exited"
        with self.env.broker.log_path.open("rb") as log:
            log.seek(since)
            for line in log.read().decode(errors="replace").splitlines():
                if any(pattern in line for pattern in BROKER_BREAKAGE):
                    return line.strip()
        return None

    def reset(self) -> None:
        """A brand-new broker (empty data, same ports) with the deployment registered again."""
        self.env.broker.wipe()
        self.env.broker.start()
        if not self.env.handler.running():
            self.env.handler.start()
        self.env.register()

    def effects(self, kind: str | None = None, key: str | None = None) -> list[dict[str, Any]]:
        return [
            e
            for e in read_json_lines(self.effects_file)
            if (kind is None or e["kind"] == kind) and (key is None or e["key"] == key)
        ]


T = TypeVar("T")


async def eventually(
    probe: Callable[[], Awaitable[T]],
    *,
    until: Callable[[T], bool] = bool,
    within: float = 20.0,
    what: str = "condition",
) -> T:
    """Poll `probe` until `until(result)` holds; fail with the last result after `within` s."""
    deadline = time.monotonic() + within
    while True:
        result = await probe()
        if until(result):
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}; last: {result!r}")
        await asyncio.sleep(0.05)


async def send(
    ingress: httpx.AsyncClient, path: str, body: Any, headers: dict[str, str] | None = None
) -> str:
    """A one-way call through the ingress (`/send`); returns the new invocation's id."""
    response = await ingress.post(f"{path}/send", json=body, headers=headers)
    assert response.status_code == 202, response.text
    invocation_id: str = response.json()["invocationId"]
    return invocation_id


async def attach(ingress: httpx.AsyncClient, invocation_id: str) -> httpx.Response:
    """Wait for an invocation's result through the ingress."""
    return await ingress.get(f"/restate/invocation/{invocation_id}/attach")


async def call_json(ingress: httpx.AsyncClient, path: str, body: Any = None) -> Any:
    """A request/response call that must succeed; returns the decoded JSON result."""
    if body is None:
        response = await ingress.post(path)
    else:
        response = await ingress.post(path, json=body)
    assert response.status_code == 200, f"{path}: HTTP {response.status_code} {response.text}"
    return response.json() if response.content else None


def booking_trail(scenario: Scenario, trip: str) -> list[tuple[str, str]]:
    """What the Trips saga did for `trip`, in order: (booked|failed|cancelled, item)."""
    kinds = ("booked", "failed", "cancelled")
    return [(e["kind"], e["item"]) for e in scenario.effects(key=trip) if e["kind"] in kinds]


async def wait_for_payment_window(scenario: Scenario, trip: str) -> None:
    """Until `Trips/book` for `trip` has its flight and hotel journaled and goes to sleep."""

    async def paying() -> list[dict[str, Any]]:
        return scenario.effects("paying", trip)

    await eventually(paying, what=f"trip {trip} to reach its payment window")
    assert booking_trail(scenario, trip) == [("booked", "flight"), ("booked", "hotel")]
