"""Message framing: an 8-byte header (u16 type, u16 flags, u32 length) before each body.

0               16                 32                                64
+---------------+------------------+----------------------------------+----------
|  type (u16)   | A|reserved (u16) |          length (u32)            |  body...
+---------------+------------------+----------------------------------+----------
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

from ._messages import MESSAGE_TYPES, TYPE_CODES
from ._proto import DecodeError, Message

_HEADER = struct.Struct(">HHI")
HEADER_SIZE = _HEADER.size
REQUESTED_ACK = 0x8000
CUSTOM_ENTRY_MASK = 0xFC00


@dataclass(slots=True)
class Frame:
    """One decoded message. `message` is None for custom entries, kept as `raw`."""

    type: int
    flags: int
    message: Message | None
    raw: bytes


def encode(message: Message, *, flags: int = 0) -> bytes:
    body = message.encode()
    return _HEADER.pack(TYPE_CODES[type(message)], flags, len(body)) + body


def encode_raw(type_code: int, body: bytes, *, flags: int = 0) -> bytes:
    return _HEADER.pack(type_code, flags, len(body)) + body


class FrameDecoder:
    """Incremental decoder: feed bytes as they arrive, iterate the complete frames."""

    def __init__(self, *, max_message_size: int = 64 * 1024 * 1024) -> None:
        self._buffer = bytearray()
        self._max = max_message_size

    def feed(self, data: bytes) -> Iterator[Frame]:
        self._buffer += data
        buf = self._buffer
        pos = 0
        while len(buf) - pos >= HEADER_SIZE:
            type_code, flags, length = _HEADER.unpack_from(buf, pos)
            if length > self._max:
                raise DecodeError(f"message of {length} bytes exceeds the {self._max} limit")
            if len(buf) - pos - HEADER_SIZE < length:
                break
            start = pos + HEADER_SIZE
            raw = bytes(buf[start : start + length])
            pos = start + length
            yield Frame(type_code, flags, decode_body(type_code, raw), raw)
        del buf[:pos]

    @property
    def pending(self) -> int:
        """Bytes of an incomplete frame still buffered."""
        return len(self._buffer)


def decode_body(type_code: int, raw: bytes) -> Message | None:
    cls = MESSAGE_TYPES.get(type_code)
    if cls is None:
        if type_code & CUSTOM_ENTRY_MASK == CUSTOM_ENTRY_MASK:
            return None
        raise DecodeError(f"unknown message type 0x{type_code:04x}")
    return cls.decode(raw)


def decode_all(data: bytes) -> list[Frame]:
    decoder = FrameDecoder()
    frames = list(decoder.feed(data))
    if decoder.pending:
        raise DecodeError(f"{decoder.pending} trailing bytes after the last frame")
    return frames
