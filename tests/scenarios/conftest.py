"""Fixtures of the scenario suite: one broker and one handler process per parameter set.

The parameters are sdk x transport x replay x broker. The session-scoped `scenario` fixture
is parametrized over them, so pytest runs all the tests of one parameter set together and
starts each broker and handler process once, not once per test.

Parameter ids read like `sluice-sdk-h2-always-replay-on-restate-server`; select with `-k`,
e.g. `pytest tests/scenarios -k sluice-broker` or `-k "restate-sdk and http1.1"`. The logs of
each parameter set (broker, handler, side effects) stay under pytest's basetemp, named by id.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from sluice.testing import (
    Broker,
    HandlerProcess,
    HarnessError,
    SluiceBroker,
    TestEnvironment,
    Transport,
    make_broker,
)
from tests.kafka import Tansu

from .effects import EFFECTS_ENV
from .support import KAFKA_LOG_SDKS, MATRIX_BROKERS, REPO, SDKS, Scenario, Setup

TARGETS = {
    "restate-sdk": "tests.scenarios.restate_services:app",
    "sluice": "tests.scenarios.sluice_services:app",
}


def _setups() -> list[Setup]:
    setups = []
    for broker in MATRIX_BROKERS:
        for sdk_name in SDKS:
            for transport in (Transport.H2, Transport.HTTP1):
                # SLUICE_ALWAYS_REPLAY is a switch of the Sluice SDK's endpoint only.
                for always_replay in (False, True) if sdk_name == "sluice" else (False,):
                    combination = (sdk_name, transport, always_replay)
                    on_kafka = broker in ("sluice-kafka-log", "sluice-partitioned")
                    if on_kafka and combination not in KAFKA_LOG_SDKS:
                        continue
                    setups.append(Setup(sdk_name, transport, always_replay, broker))
    return setups


SETUPS = _setups()


@pytest.fixture(scope="session", params=SETUPS, ids=[s.id for s in SETUPS])
def scenario(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Scenario]:
    setup: Setup = request.param
    # Under pytest's basetemp, so that the logs of the last runs stay for a post-mortem.
    work = tmp_path_factory.mktemp(setup.id, numbered=False)
    effects_file = work / "effects.jsonl"
    effects_file.touch()
    if setup.broker in ("sluice-kafka-log", "sluice-partitioned"):
        kafka: Tansu = request.getfixturevalue("kafka")
        args = ["--log", f"kafka://{kafka.bootstrap}/log-{uuid.uuid4().hex[:8]}"]
        if setup.broker == "sluice-partitioned":
            args.append("--physical-partitions")
        broker: Broker = SluiceBroker(work_dir=work / "broker", extra_args=args)
    else:
        broker = make_broker(setup.broker, work_dir=work / "broker")
    env = TestEnvironment(
        broker,
        HandlerProcess(
            TARGETS[setup.sdk],
            env={EFFECTS_ENV: str(effects_file)},
            always_replay=setup.always_replay,
            cwd=REPO,
            work_dir=work / "handler",
        ),
        transport=setup.transport,
    )
    try:
        env.start()
    except HarnessError as exc:
        env.close()
        pytest.fail(f"{setup.id}: the environment did not start: {exc}", pytrace=False)
    try:
        yield Scenario(setup, env, effects_file)
    finally:
        env.close()
        # Keep the logs (broker.log, handler/handler.log, effects.jsonl), drop the data.
        shutil.rmtree(env.broker.data_dir, ignore_errors=True)


@pytest.fixture
def broker_survives(scenario: Scenario) -> Iterator[None]:
    """Fail the test after which the broker broke, and give the next tests a fresh broker.

    Without this, one test that crashes a partition processor of restate-server (as a
    malformed awakeable id does) would turn every later test of its parameter set into a
    timeout, and hide which test did it.
    """
    mark = scenario.broker_log_size()
    yield
    breakage = scenario.broker_breakage(mark)
    if breakage is not None:
        scenario.reset()
        pytest.fail(
            f"{scenario.env.broker.name} broke during this test: {breakage!r}. It was restarted "
            "with empty data for the next tests.",
            pytrace=False,
        )


@pytest.fixture
async def ingress(scenario: Scenario, broker_survives: None) -> AsyncIterator[httpx.AsyncClient]:
    # Every scenario completes in a few seconds; 15 s means stuck, not slow.
    async with scenario.env.ingress_client(timeout=15.0) as client:
        yield client


@pytest.fixture
def key() -> str:
    """A fresh object key / workflow id, so tests sharing one environment never collide."""
    return uuid.uuid4().hex[:12]
