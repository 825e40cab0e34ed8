"""Stream handlers in the SDK: the batch declaration, its manifest metadata, and the typed
input and output helpers (pure code; tests/egress/test_declared_batch.py runs them end to end)."""

from __future__ import annotations

import json

import pytest

import sluice
from sluice import Batch, Context, OutputRecord, Record, RecordBatch, Service
from sluice._service import handler_of

svc = Service("Batched")


@svc.handler(batch=Batch(max_records=250, max_ms=40))
async def transform(ctx: Context, batch: RecordBatch) -> list[OutputRecord]:
    return [OutputRecord(r.value, key=r.key) for r in batch.records]


@svc.handler(batch=Batch(), metadata={"team": "orders"})
async def untyped(ctx: Context, batch: dict) -> list:  # type: ignore[type-arg]
    return batch["records"]  # type: ignore[no-any-return]


def test_the_declaration_is_handler_metadata_in_the_manifest() -> None:
    manifest = sluice.app(svc).manifest(bidi=False, version=3)
    handlers = {h["name"]: h for h in manifest["services"][0]["handlers"]}
    assert handlers["transform"]["metadata"] == {
        "sluice.batch.max_records": "250",
        "sluice.batch.max_ms": "40",
    }
    assert handlers["untyped"]["metadata"] == {
        "sluice.batch.max_records": "500",
        "sluice.batch.max_ms": "100",
        "team": "orders",
    }


def test_batch_limits_are_checked() -> None:
    with pytest.raises(ValueError, match="max_records"):
        Batch(max_records=0)
    with pytest.raises(ValueError, match="max_ms"):
        Batch(max_ms=60_001)
    with pytest.raises(TypeError, match="must take"):

        @Service("NoInput").handler(batch=Batch())
        async def nothing(ctx: Context) -> None: ...


def test_the_input_is_a_typed_record_batch() -> None:
    wire = {
        "topic": "orders",
        "partition": 3,
        "records": [
            {"offset": 10, "key": "a", "value": {"i": 1}, "headers": {"h": "x"}},
            {"offset": 11, "key": None, "value_b64": "AAE=", "headers": {}},
        ],
    }
    serde = handler_of(transform).input_serde
    batch = serde.deserialize(json.dumps(wire).encode())
    assert batch == RecordBatch(
        topic="orders",
        partition=3,
        records=[Record(10, "a", {"i": 1}, {"h": "x"}), Record(11, None, b"\x00\x01", {})],
    )
    assert serde.deserialize(serde.serialize(batch)) == batch
    with pytest.raises(sluice.SerdeError, match="not a record batch"):
        serde.deserialize(b'{"topic": "orders"}')
    # Without the RecordBatch hint the handler gets the JSON as it is.
    assert handler_of(untyped).input_serde.deserialize(json.dumps(wire).encode()) == wire


def test_the_output_is_the_list_the_broker_splits_into_records() -> None:
    serde = handler_of(transform).output_serde
    out = [
        OutputRecord({"i": 1}, key="a", headers={"h": "x"}),
        OutputRecord(b"\xff", key=b"\x00", topic="other"),
        {"plain": True},
    ]
    # A value as JSON text: the broker sends those bytes as the record value.
    assert json.loads(serde.serialize(out)) == [
        {"value_json": '{"i":1}', "key": "a", "headers": {"h": "x"}},
        {"value_b64": "/w==", "key_b64": "AA==", "topic": "other"},
        {"plain": True},
    ]
    assert serde.deserialize(serde.serialize(out)) == out
    # What other SDKs (and older versions) send reads the same.
    assert serde.deserialize(b'[{"value": {"i": 1}, "key": "a", "headers": {"h": "x"}}]') == [
        out[0]
    ]
