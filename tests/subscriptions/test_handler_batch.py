"""A subscription takes its handler's declared batching (sdk.Batch, as handler metadata)
only where it sets none itself."""

from __future__ import annotations

import pytest

from sluice.subscriptions import Subscription

DECLARED = {"sluice.batch.max_records": "250", "sluice.batch.max_ms": "40"}


def sub(**options: str) -> Subscription:
    body = {"source": "kafka://local/t", "sink": "service://S/h", "options": options}
    return Subscription.from_request(body)[0]


def test_a_subscription_without_batch_options_takes_the_declaration() -> None:
    s = sub().with_handler_batch(DECLARED)
    assert (s.batch_max_records, s.batch_wait_ms) == (250, 40)
    assert sub().with_handler_batch({}).batch_max_records is None  # one record per invocation


def test_the_subscription_setting_wins() -> None:
    s = sub(batch_max_records="3").with_handler_batch(DECLARED)
    assert (s.batch_max_records, s.batch_wait_ms) == (3, 100)
    assert sub(batch_max_records="0").with_handler_batch(DECLARED).batch_max_records == 0
    s = sub(batch_max_ms="5").with_handler_batch(DECLARED)
    assert (s.batch_max_records, s.batch_wait_ms) == (250, 5)


def test_a_bad_declaration_is_named() -> None:
    with pytest.raises(ValueError, match="batch declaration"):
        sub().with_handler_batch({"sluice.batch.max_records": "lots"})
