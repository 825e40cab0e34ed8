from __future__ import annotations

from ._base import Serde


class RawSerde(Serde):
    """Bytes as they are; a null value becomes empty input."""

    name = "raw"
    content_type = "application/octet-stream"

    def decode(self, value: bytes | None) -> bytes:
        return value or b""

    def encode(self, payload: bytes) -> bytes:
        return payload
