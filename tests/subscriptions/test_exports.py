"""The public names of the Kafka-ingress packages, pinned (private modules may change)."""

from __future__ import annotations

import connectors.kafka
import ingress.kafka
import subscriptions


def test_exported_names() -> None:
    assert sorted(subscriptions.__all__) == [
        "Controller",
        "DeclarationError",
        "Declarations",
        "KafkaCluster",
        "Subscription",
        "load_declarations",
    ]
    assert sorted(ingress.kafka.__all__) == [
        "DeadLetterSender",
        "PartitionStats",
        "SubscriptionConsumer",
    ]
    for mod in (subscriptions, ingress.kafka, connectors.kafka):
        for name in mod.__all__:
            assert getattr(mod, name) is not None, (mod.__name__, name)
