"""Sample orders: `python -m examples.orders.sample --bootstrap HOST:PORT` produces them."""

from __future__ import annotations

import argparse
import json
import random
from typing import Any

from sluice.connectors.kafka import Producer, TopicAdmin  # confluent-kafka inside

SKUS = {"tea": 4.5, "mug": 12.0, "kettle": 39.0, "beans": 9.75, "grinder": 89.0}


def orders(count: int, customers: int, seed: int) -> list[tuple[str, dict[str, Any]]]:
    """`count` orders as (customer key, order) pairs; the same seed gives the same orders."""
    rng = random.Random(seed)
    out = []
    for i in range(count):
        customer = f"c{rng.randrange(customers):03d}"
        lines = [
            {"sku": sku, "quantity": rng.randint(1, 3), "unit_price": SKUS[sku]}
            for sku in rng.sample(sorted(SKUS), rng.randint(1, 3))
        ]
        out.append((customer, {"id": f"o{i:06d}", "customer": customer, "lines": lines}))
    return out


def produce(
    bootstrap: str, topic: str, batch: list[tuple[str, dict[str, Any]]], partitions: int = 4
) -> None:
    """Produce ``batch`` to ``topic``, creating it with ``partitions`` first if it is missing
    (a broker that does not create topics on first use, such as Tansu, needs this)."""
    TopicAdmin({"bootstrap.servers": bootstrap}).create_topic(topic, partitions)
    producer = Producer(
        {"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5}
    )
    for customer, order in batch:
        producer.produce(topic, key=customer.encode(), value=json.dumps(order).encode())
    producer.flush()


def main() -> None:
    parser = argparse.ArgumentParser(description="produce sample orders to Kafka")
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    parser.add_argument("--topic", default="orders")
    parser.add_argument("--records", type=int, default=2000)
    parser.add_argument("--customers", type=int, default=50)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--partitions", type=int, default=4, help="if the topic is created")
    args = parser.parse_args()
    batch = orders(args.records, args.customers, args.seed)
    produce(args.bootstrap, args.topic, batch, args.partitions)
    print(f"produced {args.records} orders to {args.topic} on {args.bootstrap}")


if __name__ == "__main__":
    main()
