"""Kafka to Kafka, exactly once: Sluice stream handlers vs Quix Streams 3.x vs a plain
confluent-kafka transactional loop (the ceiling), same machine, same Tansu, same map.

    python -m bench.kafka_egress [--records 100000] [--runs 3] [--per-record 20000]

Each run pre-loads a fresh 4-partition topic with small JSON records ({"i": n}, 1,000 keys),
then starts one pipeline that maps each record to {"i": n, "by": ...} under the same key on
a fresh output topic, exactly once:
- sluice-stream: a Sluice subscription into a stream handler (bench/egress_handlers.py,
  Sluice SDK, ``sdk.Batch``: batches of up to 500 records of one partition, one durable
  invocation each) with an output topic; delivered by Sluice's transactional egress;
- quix: Quix Streams 3.28, processing_guarantee="exactly-once", in its own virtualenv
  (.venv-quix, created here: it pins confluent-kafka<2.13 and pydantic<2.14);
- ceiling: consume → transactional produce → send_offsets_to_transaction, 1,000 records per
  transaction (bench/kafka_egress_peers.py);
- sluice-record: per-record durable handlers (one invocation per record), --per-record
  records, reported separately.
records/s = records / (last output record visible to a read_committed reader - first record
reaching the map). Start-up (Quix's group join waits for Tansu's rebalance timeout) is not
counted; the wall time including it is printed too. Medians over --runs runs.
Tansu keeps everything in memory (about 2 ms per transaction, no fsync): these are upper
bounds for a real Kafka. Sluice fdatasyncs its own log, as by default.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench.compare import ROOT, free_port, start_sluice, wait_http
from bench.kafka_ingest import http, start_tansu
from sluice.connectors.kafka import Consumer, Producer, TopicAdmin, TopicPartitionOffset
from sluice.connectors.kafka._client import OFFSET_BEGINNING

QUIX_VENV = ROOT / ".venv-quix"
QUIX_REQUIREMENT = "quixstreams>=3.28,<3.29"
PEERS = ROOT / "bench" / "kafka_egress_peers.py"
PARTITIONS = 4
KEYS = 1000


def quix_python() -> Path:
    py = QUIX_VENV / "bin" / "python"
    if not py.exists():
        print(f"creating {QUIX_VENV} with {QUIX_REQUIREMENT} ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(QUIX_VENV)], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "--quiet", QUIX_REQUIREMENT], check=True)
    return py


_names = iter(range(1_000_000))


def preload(bootstrap: str, records: int) -> tuple[str, str]:
    n = next(_names)
    src, dst = f"egress-in-{os.getpid()}-{n}", f"egress-out-{os.getpid()}-{n}"
    admin = TopicAdmin({"bootstrap.servers": bootstrap})
    admin.create_topic(src, PARTITIONS)
    admin.create_topic(dst, PARTITIONS)
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20})
    for i in range(records):
        p.produce(src, json.dumps({"i": i}).encode(), key=f"key-{i % KEYS}".encode())
    p.flush(120)
    return src, dst


class Reader(threading.Thread):
    """Counts committed output records; notes when the last one arrived."""

    def __init__(self, bootstrap: str, topic: str, want: int, timeout: float) -> None:
        super().__init__(daemon=True)
        self.bootstrap, self.topic, self.want, self.timeout = bootstrap, topic, want, timeout
        self.count = 0
        self.distinct: set[int] = set()
        self.done_at: float | None = None
        self.ready = threading.Event()

    def run(self) -> None:
        c = Consumer(
            {
                "bootstrap.servers": self.bootstrap,
                "group.id": f"reader-{self.topic}",
                "isolation.level": "read_committed",
            }
        )
        parts = c.partitions(self.topic) or []
        c.assign([TopicPartitionOffset(self.topic, n, OFFSET_BEGINNING) for n in parts])
        self.ready.set()
        deadline = time.monotonic() + self.timeout
        while self.count < self.want and time.monotonic() < deadline:
            for m in c.consume(5000, 0.05):
                self.count += 1
                self.distinct.add(json.loads(m.value or b"{}").get("i", -1))
            if self.count >= self.want:
                self.done_at = time.time()
        c.close()


def measure(name: str, bootstrap: str, records: int, start: Any, timeout: float) -> dict[str, Any]:
    src, dst = preload(bootstrap, records)
    reader = Reader(bootstrap, dst, records, timeout)
    reader.start()
    reader.ready.wait(30)
    t0 = time.time()
    first = start(src, dst)  # returns a callable giving the first-record time (or None)
    reader.join(timeout + 5)
    t_first = first()
    r: dict[str, Any] = {"pipeline": name, "records": records, "out": reader.count,
                         "distinct": len(reader.distinct)}  # fmt: skip
    if reader.done_at is not None and t_first is not None:
        r["records_per_s"] = records / max(reader.done_at - t_first, 1e-6)
        r["wall_s"] = reader.done_at - t0
    print(
        f"  {name:14} out {reader.count:>7} (distinct {len(reader.distinct)})  "
        + (
            f"{r['records_per_s']:>9.0f} records/s  wall {r['wall_s']:.1f}s"
            if "records_per_s" in r
            else "did not finish"
        ),
        flush=True,
    )
    return r


def peer(python: Path, mode: str, bootstrap: str, records: int) -> Any:
    def start(src: str, dst: str) -> Any:
        proc = subprocess.Popen(
            [str(python), str(PEERS), mode, bootstrap, src, dst, str(records)],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )  # fmt: skip
        first: list[float] = []

        def follow() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                if line.startswith("FIRST "):
                    first.append(float(line.split()[1]))

        t = threading.Thread(target=follow, daemon=True)
        t.start()

        def get() -> float | None:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
            t.join(5)
            return first[0] if first else None

        return get

    return start


def sluice(admin: int, handler_port: int, sink: str, options: dict[str, str]) -> Any:
    def start(src: str, dst: str) -> Any:
        http(
            "POST",
            f"http://127.0.0.1:{admin}/subscriptions",
            {
                "source": f"kafka://bench/{src}",
                "sink": sink,
                "options": {"name": src, "output_topic": dst, **options},
            },
        )

        def get() -> float | None:
            with urllib.request.urlopen(f"http://127.0.0.1:{handler_port}/first") as r:
                first: dict[str, float] = json.loads(r.read())
            http("DELETE", f"http://127.0.0.1:{admin}/subscriptions/{src}")
            return first.get(src)

        return get

    return start


def main() -> None:
    ap = argparse.ArgumentParser(
        prog="python -m bench.kafka_egress", description=__doc__.split("\n\n")[0]
    )
    ap.add_argument("--records", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--per-record", type=int, default=20_000, help="records, 0: skip")
    ap.add_argument(
        "--batch", type=int, default=0, help="stream handler batch size (0: as declared, 500)"
    )
    ap.add_argument("--timeout", type=float, default=300.0)
    ap.add_argument("--only", action="append", help="sluice-stream, quix, ceiling, sluice-record")
    ap.add_argument("--json", help="also write the results to this file")
    args = ap.parse_args()
    only = set(args.only or ["sluice-stream", "quix", "ceiling", "sluice-record"])

    qpy = quix_python() if "quix" in only else None
    tansu, bootstrap = start_tansu()
    hport = free_port()
    handler = subprocess.Popen(
        [sys.executable, "-m", "hypercorn", "bench.egress_handlers:app", "--bind",
         f"127.0.0.1:{hport}"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    b = start_sluice()
    results: list[dict[str, Any]] = []
    try:
        wait_http(f"http://127.0.0.1:{hport}/first")
        req = urllib.request.Request(
            f"http://127.0.0.1:{b.admin}/deployments",
            data=json.dumps(
                {"uri": f"http://127.0.0.1:{hport}", "force": True, "use_http_11": True}
            ).encode(),
            headers={"content-type": "application/json"},
            method="POST",
        )
        urllib.request.urlopen(req, timeout=30).read()
        http(
            "POST",
            f"http://127.0.0.1:{b.admin}/kafka-clusters",
            {"name": "bench", "properties": {"bootstrap.servers": bootstrap}},
        )
        pipelines: dict[str, tuple[int, Any]] = {
            "sluice-stream": (
                args.records,
                sluice(
                    b.admin,
                    hport,
                    "service://BenchStream/batch",
                    {"max_in_flight": "50000"}
                    | ({"batch_max_records": str(args.batch)} if args.batch else {}),
                ),
            ),
            "ceiling": (
                args.records,
                peer(Path(sys.executable), "ceiling", bootstrap, args.records),
            ),
        }
        if qpy is not None:
            pipelines["quix"] = (args.records, peer(qpy, "quix", bootstrap, args.records))
        for run in range(args.runs):
            print(f"run {run + 1}/{args.runs}", flush=True)
            for name in ("sluice-stream", "quix", "ceiling"):
                if name in only and name in pipelines:
                    n, start = pipelines[name]
                    results.append({**measure(name, bootstrap, n, start, args.timeout), "run": run})
        if "sluice-record" in only and args.per_record:
            print("per-record durable handlers", flush=True)
            start = sluice(b.admin, hport, "service://BenchMap/map", {"max_in_flight": "2000"})
            results.append(
                measure("sluice-record", bootstrap, args.per_record, start, args.timeout)
            )
    finally:
        b.stop()
        handler.terminate()
        handler.wait(10)
        tansu.terminate()
        tansu.wait(10)

    med: dict[str, float] = {}
    for name in ("sluice-stream", "quix", "ceiling", "sluice-record"):
        rates = [
            r["records_per_s"] for r in results if r["pipeline"] == name and "records_per_s" in r
        ]
        if rates:
            med[name] = statistics.median(rates)
    print("\nmedian records/s (exactly once, Tansu in memory: upper bounds)")
    for name, v in med.items():
        print(f"  {name:14} {v:>9.0f}")
    if "sluice-stream" in med:
        for other in ("quix", "ceiling"):
            if other in med:
                print(f"  sluice-stream / {other}: {med['sluice-stream'] / med[other]:.2f}x")
    if args.json:
        Path(args.json).write_text(
            json.dumps({"command": " ".join(sys.argv), "results": results, "median": med}, indent=2)
        )


if __name__ == "__main__":
    main()
