"""Kafka subscriptions: which topics feed which handlers, declared through the admin API, the
CLI or a declarations file, and the controller that keeps the consumers equal to them.

The names load on first use: the CLI's subscription commands (``_cli``) talk to the admin API
over HTTP and must run where only the SDK is installed (no pydantic, no Kafka client)."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._controller import Controller
    from ._declarations import DeclarationError, load_declarations
    from ._models import Declarations, KafkaCluster, Subscription

_WHERE = {
    "Controller": "._controller",
    "DeclarationError": "._declarations",
    "load_declarations": "._declarations",
    "Declarations": "._models",
    "KafkaCluster": "._models",
    "Subscription": "._models",
}

__all__ = [
    "Controller",
    "DeclarationError",
    "Declarations",
    "KafkaCluster",
    "Subscription",
    "load_declarations",
]


def __getattr__(name: str) -> Any:
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(where, __name__), name)
    globals()[name] = value
    return value
