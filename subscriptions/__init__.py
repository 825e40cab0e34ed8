"""Kafka subscriptions: which topics feed which handlers, declared through the admin API, the
CLI or a declarations file, and the controller that keeps the consumers equal to them."""

from ._controller import Controller
from ._declarations import DeclarationError, load_declarations
from ._models import Declarations, KafkaCluster, Subscription

__all__ = [
    "Controller",
    "DeclarationError",
    "Declarations",
    "KafkaCluster",
    "Subscription",
    "load_declarations",
]
