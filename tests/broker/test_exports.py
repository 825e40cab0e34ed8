"""The public names of the broker packages are pinned: changing them is a deliberate act."""

from __future__ import annotations

import sluice.broker.invoker
import sluice.broker.log
import sluice.broker.schema
import sluice.broker.storage
import sluice.ingress.http


def test_exported_names() -> None:
    assert sorted(sluice.broker.log.__all__) == [
        "EmbeddedLog",
        "KafkaLog",
        "KafkaLogAddress",
        "KafkaLogError",
        "KafkaUnavailable",
        "Log",
        "LogCorrupted",
        "LogProducer",
        "Record",
        "ensure_topic",
    ]
    assert sorted(sluice.broker.storage.__all__) == [
        "COLUMN_FAMILIES",
        "MemoryStore",
        "RocksDBStore",
        "Store",
        "Transaction",
    ]
    assert sorted(sluice.broker.invoker.__all__) == [
        "H2Client",
        "H2Response",
        "Invoker",
        "InvokerOptions",
        "http1_request",
    ]
    assert sorted(sluice.broker.schema.__all__) == [
        "Deployment",
        "DiscoveryError",
        "HandlerInfo",
        "Registry",
        "ServiceInfo",
        "discover",
    ]
    assert sorted(sluice.ingress.http.__all__) == ["Ingress", "parse_delay"]
