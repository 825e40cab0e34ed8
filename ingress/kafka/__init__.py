"""Kafka ingress: subscription consumers that feed records into the log exactly once, and the
dead-letter sender."""

from ._consumer import PartitionStats, SubscriptionConsumer
from ._deadletters import DeadLetterSender

__all__ = ["DeadLetterSender", "PartitionStats", "SubscriptionConsumer"]
