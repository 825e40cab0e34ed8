"""The public names of the Kafka-ingress packages, pinned (private modules may change)."""

from __future__ import annotations

import sluice.connectors.kafka
import sluice.ingress.kafka
import sluice.subscriptions


def test_exported_names() -> None:
    assert sorted(sluice.subscriptions.__all__) == [
        "Controller",
        "DeclarationError",
        "Declarations",
        "KafkaCluster",
        "Subscription",
        "load_declarations",
    ]
    assert sorted(sluice.ingress.kafka.__all__) == [
        "DeadLetterSender",
        "PartitionStats",
        "SubscriptionConsumer",
    ]
    for mod in (sluice.subscriptions, sluice.ingress.kafka, sluice.connectors.kafka):
        for name in mod.__all__:
            assert getattr(mod, name) is not None, (mod.__name__, name)
