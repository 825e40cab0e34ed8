"""A transactional producer that opens a transaction, delivers records and waits to be killed.

Run as a subprocess by test_kafka_conformance: SIGKILL leaves the transaction open on the
broker with no client-side cleanup, the way a crashed egress sink would.
"""

from __future__ import annotations

import sys

from sluice.connectors.kafka import TransactionalProducer


def main() -> None:
    bootstrap, tid, topic, *values = sys.argv[1:]
    p = TransactionalProducer({"bootstrap.servers": bootstrap}, tid)
    p.init()
    p.begin()
    for v in values:
        p.produce(topic, v.encode(), partition=0)
    p.flush()
    print("open", flush=True)
    sys.stdin.read()  # until killed


if __name__ == "__main__":
    main()
