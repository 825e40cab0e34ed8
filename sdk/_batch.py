"""Stream handlers: a handler that takes a batch of Kafka records and returns output records.

    @orders.handler(batch=sdk.Batch(max_records=500, max_ms=100))
    async def enrich(ctx: Context, batch: RecordBatch) -> list[OutputRecord]: ...

The declaration travels to the broker as handler metadata in the discovery manifest
(``sluice.batch.max_records``, ``sluice.batch.max_ms``); a subscription onto the handler
then hands it up to ``max_records`` records of one partition per invocation, unless the
subscription sets ``batch_max_records`` itself. On the wire the input is
``{"topic", "partition", "records": [{"offset", "key", "value" | "value_b64", "headers"}]}``
and the output a JSON list of ``{"value_json" | "value" | "value_b64", "key" | "key_b64",
"headers", "topic"}``; these types read and write that shape without pydantic. The SDK
writes each value as JSON text (``value_json``), so the broker sends it as it is instead
of parsing and encoding it again: that work stays in the handler's process.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import Any

from ._serde import SerdeError

_compact = json.JSONEncoder(separators=(",", ":")).encode

# Handler metadata keys of a batch declaration (the broker reads the same names).
MAX_RECORDS = "sluice.batch.max_records"
MAX_MS = "sluice.batch.max_ms"


@dataclass(frozen=True, slots=True)
class Batch:
    """Declares a stream handler: it takes up to ``max_records`` records of one partition,
    or as many as arrived within ``max_ms`` milliseconds, as one durable invocation
    (deduplicated by the batch's last offset), and its outputs leave in one egress
    transaction."""

    max_records: int = 500
    max_ms: int = 100

    def __post_init__(self) -> None:
        if not 1 <= self.max_records <= 100_000:
            raise ValueError(f"Batch.max_records must be 1..100000, not {self.max_records}")
        if not 1 <= self.max_ms <= 60_000:
            raise ValueError(f"Batch.max_ms must be 1..60000, not {self.max_ms}")

    def metadata(self) -> dict[str, str]:
        return {MAX_RECORDS: str(self.max_records), MAX_MS: str(self.max_ms)}


@dataclass(slots=True)
class Record:
    """One Kafka record of a batch. ``key``: the record key as text (not UTF-8: ``b64:``
    and its base64), None without a key; ``value``: the decoded JSON value, or ``bytes``
    when the subscription's serde is raw or the value is not JSON."""

    offset: int
    key: str | None
    value: Any
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class RecordBatch:
    """The input of a stream handler: records of one partition, in offset order."""

    topic: str
    partition: int
    records: list[Record]


@dataclass(slots=True)
class OutputRecord:
    """One record a stream handler returns. ``value``: ``bytes`` as they are, anything else
    as JSON; ``key``: default none (``bytes`` as they are, ``str`` as UTF-8); ``topic``:
    default the subscription's output topic; ``headers`` add to the subscription's."""

    value: Any
    key: str | bytes | None = None
    headers: dict[str, str] | None = None
    topic: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if isinstance(self.value, bytes):
            out["value_b64"] = base64.b64encode(self.value).decode()
        else:
            out["value_json"] = _compact(self.value)
        if isinstance(self.key, bytes):
            out["key_b64"] = base64.b64encode(self.key).decode()
        elif self.key is not None:
            out["key"] = self.key
        if self.headers:
            out["headers"] = dict(self.headers)
        if self.topic:
            out["topic"] = self.topic
        return out


class RecordBatchSerde:
    """A batch's JSON input as a ``RecordBatch`` (and back)."""

    content_type = "application/json"

    def deserialize(self, data: bytes) -> RecordBatch:
        try:
            body = json.loads(data)
            return RecordBatch(
                topic=str(body["topic"]),
                partition=int(body["partition"]),
                records=[_record(r) for r in body["records"]],
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise SerdeError(f"not a record batch: {exc!r}") from exc

    def serialize(self, value: RecordBatch) -> bytes:
        records = []
        for r in value.records:
            item: dict[str, Any] = {"offset": r.offset, "key": r.key, "headers": r.headers}
            if isinstance(r.value, bytes):
                item["value_b64"] = base64.b64encode(r.value).decode()
            else:
                item["value"] = r.value
            records.append(item)
        body = {"topic": value.topic, "partition": value.partition, "records": records}
        return json.dumps(body, separators=(",", ":")).encode()

    def json_schema(self) -> dict[str, Any] | None:
        return None


class OutputRecordsSerde:
    """A stream handler's result: a list of ``OutputRecord`` (or plain JSON values, sent
    as record values with no key) as the JSON list the broker splits into records."""

    content_type = "application/json"

    def serialize(self, value: list[OutputRecord | Any] | None) -> bytes:
        items = [v.to_json() if isinstance(v, OutputRecord) else v for v in value or []]
        try:
            return json.dumps(items, separators=(",", ":")).encode()
        except (TypeError, ValueError) as exc:
            raise SerdeError(f"output records are not JSON-serializable: {exc}") from exc

    def deserialize(self, data: bytes) -> list[OutputRecord | Any]:
        try:
            items = json.loads(data) if data else []
        except ValueError as exc:
            raise SerdeError(f"invalid JSON: {exc}") from exc
        return [_output(item) for item in items]

    def json_schema(self) -> dict[str, Any] | None:
        return None


def _record(item: dict[str, Any]) -> Record:
    if "value_b64" in item:
        value: Any = base64.b64decode(item["value_b64"])
    else:
        value = item.get("value")
    return Record(
        offset=int(item["offset"]),
        key=item.get("key"),
        value=value,
        headers=dict(item.get("headers") or {}),
    )


def _output(item: Any) -> OutputRecord | Any:
    if not isinstance(item, dict) or not item.keys() & {"value", "value_json", "value_b64"}:
        return item
    if "value_b64" in item:
        value: Any = base64.b64decode(item["value_b64"])
    elif "value_json" in item:
        value = json.loads(item["value_json"])
    else:
        value = item["value"]
    key = base64.b64decode(item["key_b64"]) if "key_b64" in item else item.get("key")
    return OutputRecord(value, key=key, headers=item.get("headers"), topic=item.get("topic"))
