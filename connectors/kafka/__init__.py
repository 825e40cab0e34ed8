"""Sluice's view of Kafka: records, a consumer, a producer and topic admin.

Only ``_client`` imports the Kafka client library (confluent-kafka, librdkafka); everything
else in Sluice sees these types. The calls block: async callers run them in a thread.
"""

from ._client import (
    Consumer,
    KafkaError,
    KafkaMessage,
    PartitionError,
    Producer,
    TopicAdmin,
    TopicPartitionOffset,
    TransactionalProducer,
)

__all__ = [
    "Consumer",
    "KafkaError",
    "KafkaMessage",
    "PartitionError",
    "Producer",
    "TopicAdmin",
    "TopicPartitionOffset",
    "TransactionalProducer",
]
