from __future__ import annotations

import json

import orjson

from ._base import DecodeError, Serde


def is_json(data: bytes) -> bool:
    """True if ``data`` is one strict JSON value (RFC 8259) in UTF-8. False may still be
    JSON to Python's json (NaN, Infinity): callers fall back to ``JsonSerde.decode``."""
    try:
        orjson.loads(data)
    except orjson.JSONDecodeError:
        return False
    return True


class JsonSerde(Serde):
    """UTF-8 JSON. A null (tombstone) value decodes to JSON ``null``."""

    name = "json"
    content_type = "application/json"

    def decode(self, value: bytes | None) -> bytes:
        if value is None:
            return b"null"
        try:
            json.loads(value)
        except UnicodeDecodeError as e:
            raise DecodeError(f"value is not UTF-8: {e.reason} at byte {e.start}") from None
        except ValueError as e:
            raise DecodeError(f"value is not valid JSON: {e}") from None
        return value

    def encode(self, payload: bytes) -> bytes:
        return self.decode(payload)
