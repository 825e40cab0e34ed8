"""Fixtures: a broker in the test's event loop, and restate-sdk services under hypercorn."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from sluice.broker.server import Broker
from sluice.testing import free_port
from tests import quiet

ROOT = Path(__file__).resolve().parents[2]


def wait_port(port: int, proc: subprocess.Popen[bytes] | None = None, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port} after {timeout}s")


def stop_process(proc: subprocess.Popen[bytes] | None, timeout: float = 5) -> None:
    """SIGTERM, then SIGKILL if it has not exited within `timeout` seconds (None: nothing)."""
    if proc is None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def log_holds(data: Path, needle: bytes) -> bool:
    """Whether a record of the embedded log in the data directory ``data`` holds ``needle``,
    read from the segment files as they are (never through the live log). For "this request
    did not reach the log": give its input a unique marker (a record holds its input as it
    is), and check once a later request was answered, since the log is appended in order."""
    return any(needle in seg.read_bytes() for seg in (data / "log").glob("*.seg"))


class BrokerProcess:
    """A real ``python -m sluice.broker server`` on free ports, for crash tests: SIGKILL it and
    start it again on the same ports and data. ``args``: more ``server`` flags. Its stderr goes to
    ``log``, beside the data directory, appended across restarts."""

    def __init__(self, data: Path, *args: str) -> None:
        self.data = data
        self.args = args
        self.ingress = free_port()
        self.admin = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = data.parent / "broker.log"

    def start(self, env: dict[str, str] | None = None) -> None:
        """Start on the same ports and data; ``env``: more environment (e.g. SLUICE_FAULTS)."""
        self.data.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "sluice.broker", "server", "--data-dir", str(self.data),
                 "--ingress-port", str(self.ingress), "--admin-port", str(self.admin),
                 *self.args],
                cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err, env={**os.environ, **(env or {})},
            )  # fmt: skip
        wait_port(self.ingress, self.proc)
        wait_port(self.admin, self.proc)
        quiet.LIVE.add(self.admin)

    def kill(self) -> None:
        assert self.proc is not None
        quiet.LIVE.discard(self.admin)
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> str:
        """SIGTERM (SIGKILL after 10 s); returns the log, the stderr of every start."""
        quiet.LIVE.discard(self.admin)
        stop_process(self.proc, timeout=10)
        return self.log.read_text(errors="replace") if self.log.exists() else ""


class ServiceProcess:
    def __init__(self, module: str, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.module = module
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "hypercorn",
                f"{self.module}:app",
                "--bind",
                f"127.0.0.1:{self.port}",
            ],
            cwd=ROOT,
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_port(self.port, self.proc)

    def stop(self) -> None:
        stop_process(self.proc)

    def __enter__(self) -> ServiceProcess:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture(scope="session")
def markers(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("markers") / "runs.txt"


@pytest.fixture(scope="session")
def restate_service(markers: Path) -> Iterator[ServiceProcess]:
    with ServiceProcess(
        "tests.broker.restate_services", {"SLUICE_TEST_MARKERS": str(markers)}
    ) as svc:
        yield svc


class Client:
    def __init__(self, broker: Broker) -> None:
        self.ingress = httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{broker.ingress_port}", timeout=30
        )
        self.admin = httpx.AsyncClient(base_url=f"http://127.0.0.1:{broker.admin_port}", timeout=30)

    async def register(self, uri: str, *, http1: bool = False) -> dict[str, object]:
        r = await self.admin.post(
            "/deployments", json={"uri": uri, "use_http_11": http1, "force": True}
        )
        assert r.status_code == 201, r.text
        return r.json()  # type: ignore[no-any-return]

    async def call(self, path: str, body: object = None, **kw: object) -> httpx.Response:
        data = json.dumps(body).encode() if body is not None else b""
        return await self.ingress.post(
            path,
            content=data,
            headers={"content-type": "application/json", **kw.pop("headers", {})},
            **kw,
        )  # type: ignore[arg-type]

    async def close(self) -> None:
        await self.ingress.aclose()
        await self.admin.aclose()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()


@pytest.fixture
async def client(broker: Broker) -> AsyncIterator[Client]:
    c = Client(broker)
    yield c
    await c.close()
