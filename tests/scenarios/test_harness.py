"""The harness itself: its public names, its error for a missing peer, restarts of both processes.

These tests start their own processes (not the shared parameter sets of the scenarios).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

import sluice.testing
from sluice.testing import HarnessError, Transport, harness, restate_server_binary

from .effects import EFFECTS_ENV
from .support import BROKERS, REPO


def test_public_names_are_pinned() -> None:
    assert sorted(sluice.testing.__all__) == [
        "ALWAYS_REPLAY_ENV",
        "Broker",
        "BrokerKind",
        "HandlerProcess",
        "HarnessError",
        "RESTATE_VERSION",
        "RestateServer",
        "SluiceBroker",
        "TestEnvironment",
        "Transport",
        "free_port",
        "harness",
        "make_broker",
        "read_json_lines",
        "restate_server_binary",
    ]
    for name in sluice.testing.__all__:
        assert getattr(sluice.testing, name) is not None


def test_missing_restate_server_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLUICE_RESTATE_SERVER", "/nonexistent/restate-server")
    with pytest.raises(HarnessError, match="make peers"):
        restate_server_binary()


@pytest.mark.parametrize("broker", BROKERS)
async def test_both_processes_restart_on_the_same_ports_with_their_state(
    broker: str, tmp_path: Path
) -> None:
    effects = tmp_path / "effects.jsonl"
    with harness(
        "tests.scenarios.restate_services:app",
        broker=broker,  # type: ignore[arg-type]
        transport=Transport.HTTP1,
        env={EFFECTS_ENV: str(effects)},
        cwd=REPO,
    ) as env:
        assert "Counter" in env.services()
        assert env.handler.env[EFFECTS_ENV] == str(effects)
        assert "SLUICE_ALWAYS_REPLAY" not in env.handler.env

        async def add(delta: int) -> int:
            async with env.ingress_client() as ingress:
                response = await ingress.post("/Counter/restarts/add", json=delta)
            assert response.status_code == 200, f"{response.text}\n{env.logs()}"
            value: int = response.json()
            return value

        assert await add(1) == 1
        handler_url, ingress_url = env.handler.url, env.ingress_url
        old_handler_pid, old_broker_pid = env.handler.pid, env.broker.pid

        env.handler.restart(kill=True)  # SIGKILL, then the same port again
        assert env.handler.url == handler_url and env.handler.pid != old_handler_pid
        assert await add(1) == 2

        env.broker.restart(kill=True)  # state is durable across a SIGKILL of the broker
        assert env.ingress_url == ingress_url and env.broker.pid != old_broker_pid
        assert await add(1) == 3

        env.broker.restart()  # and across a graceful stop
        assert await add(1) == 4
        broker_pid, handler_pid = env.broker.pid, env.handler.pid
    # Closing stops both processes.
    for pid in (broker_pid, handler_pid):
        assert pid is not None
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_always_replay_switch_reaches_the_handler_environment() -> None:
    handler = sluice.testing.HandlerProcess(
        "tests.scenarios.sluice_services:app", always_replay=True, cwd=REPO
    )
    try:
        assert handler.env[sluice.testing.ALWAYS_REPLAY_ENV] == "1"
    finally:
        handler.close()


def test_a_handler_that_cannot_start_fails_with_its_log() -> None:
    handler = sluice.testing.HandlerProcess("tests.scenarios.no_such_module:app", cwd=REPO)
    with pytest.raises(
        HarnessError, match=re.escape("No module named 'tests.scenarios.no_such_module'")
    ):
        handler.start()
    handler.close()


async def test_ingress_client_targets_the_broker() -> None:
    with harness("tests.scenarios.restate_services:app", cwd=REPO) as env:
        async with env.ingress_client() as ingress:
            assert (await ingress.get("/restate/health")).status_code == 200
        async with env.admin_client() as admin:
            assert (await admin.get("/health")).status_code == 200
