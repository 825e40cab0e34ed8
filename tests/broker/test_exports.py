"""The public names of the broker packages are pinned: changing them is a deliberate act."""

from __future__ import annotations

import broker.invoker
import broker.log
import broker.schema
import broker.storage
import ingress.http


def test_exported_names() -> None:
    assert sorted(broker.log.__all__) == ["EmbeddedLog", "Log", "LogCorrupted", "Record"]
    assert sorted(broker.storage.__all__) == [
        "COLUMN_FAMILIES",
        "MemoryStore",
        "RocksDBStore",
        "Store",
        "Transaction",
    ]
    assert sorted(broker.invoker.__all__) == [
        "H2Client",
        "H2Response",
        "Invoker",
        "InvokerOptions",
        "http1_request",
    ]
    assert sorted(broker.schema.__all__) == [
        "Deployment",
        "DiscoveryError",
        "HandlerInfo",
        "Registry",
        "ServiceInfo",
        "discover",
    ]
    assert sorted(ingress.http.__all__) == ["Ingress", "parse_delay"]
