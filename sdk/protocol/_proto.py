"""A small proto3 codec for declarative message classes.

Each message is a slotted dataclass with a `_schema` of `(number, attribute, kind)` rows.
Scalars equal to their default are not written, except `OPT_*` kinds, which track presence
(None means absent), as proto3 `optional` and `oneof` members do. Unknown fields are skipped
on decode, so a newer peer's additions do not break us.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Self

# Field kinds. Scalars with OPT_ prefix track presence; MSG/VALUE/VOID are always presence-tracked.
UINT = 0  # uint32/uint64/enum, default 0
BOOL = 1
STRING = 2
BYTES = 3
OPT_UINT = 4
OPT_STRING = 5
OPT_BYTES = 6
VALUE = 7  # a `Value { bytes content = 1 }` submessage, exposed as `bytes | None`
VOID = 8  # an empty `Void {}` submessage, exposed as `bool` (True = present)
MSG = 9  # a nested message; the class is the 4th item of the schema row
REP_UINT = 10  # repeated uint32, packed
REP_STRING = 11
REP_BYTES = 12
REP_MSG = 13

_LEN = 2
_VARINT = 0


class DecodeError(ValueError):
    """The bytes are not a valid encoding of the expected message."""


def _put_varint(out: bytearray, value: int) -> None:
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)


def _get_varint(buf: bytes | memoryview, pos: int) -> tuple[int, int]:
    result = 0
    shift = 0
    while True:
        if pos >= len(buf):
            raise DecodeError("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise DecodeError("varint too long")


def _put_len(out: bytearray, number: int, data: bytes) -> None:
    _put_varint(out, (number << 3) | _LEN)
    _put_varint(out, len(data))
    out += data


@dataclass(slots=True)
class Message:
    """Base of every protocol message; subclasses declare `_schema`."""

    _schema: ClassVar[tuple[tuple[Any, ...], ...]] = ()

    def encode(self) -> bytes:
        out = bytearray()
        for row in self._schema:
            number, attr, kind = row[0], row[1], row[2]
            value = getattr(self, attr)
            if kind == UINT:
                if value:
                    _put_varint(out, number << 3)
                    _put_varint(out, value)
            elif kind == BOOL:
                if value:
                    _put_varint(out, number << 3)
                    out.append(1)
            elif kind == STRING:
                if value:
                    _put_len(out, number, value.encode())
            elif kind == BYTES:
                if value:
                    _put_len(out, number, value)
            elif value is None:
                continue
            elif kind == OPT_UINT:
                _put_varint(out, number << 3)
                _put_varint(out, value)
            elif kind == OPT_STRING:
                _put_len(out, number, value.encode())
            elif kind == OPT_BYTES:
                _put_len(out, number, value)
            elif kind == VALUE:
                inner = bytearray()
                if value:
                    _put_len(inner, 1, value)
                _put_len(out, number, bytes(inner))
            elif kind == VOID:
                if value:
                    _put_len(out, number, b"")
            elif kind == MSG:
                _put_len(out, number, value.encode())
            elif kind == REP_UINT:
                if value:
                    packed = bytearray()
                    for item in value:
                        _put_varint(packed, item)
                    _put_len(out, number, bytes(packed))
            elif kind == REP_STRING:
                for item in value:
                    _put_len(out, number, item.encode())
            elif kind == REP_BYTES:
                for item in value:
                    _put_len(out, number, item)
            elif kind == REP_MSG:
                for item in value:
                    _put_len(out, number, item.encode())
        return bytes(out)

    @classmethod
    def decode(cls, data: bytes | memoryview) -> Self:
        by_number = _index(cls)
        values: dict[str, Any] = {}
        pos = 0
        end = len(data)
        while pos < end:
            tag, pos = _get_varint(data, pos)
            number, wire = tag >> 3, tag & 7
            if wire == _VARINT:
                raw_int, pos = _get_varint(data, pos)
                row = by_number.get(number)
                if row is None:
                    continue
                kind = row[2]
                if kind == BOOL:
                    values[row[1]] = bool(raw_int)
                elif kind in (UINT, OPT_UINT):
                    values[row[1]] = raw_int
                elif kind == REP_UINT:
                    values.setdefault(row[1], []).append(raw_int)
                else:
                    raise DecodeError(f"{cls.__name__}.{row[1]}: unexpected varint")
            elif wire == _LEN:
                length, pos = _get_varint(data, pos)
                if pos + length > end:
                    raise DecodeError(f"{cls.__name__}: truncated field {number}")
                chunk = bytes(data[pos : pos + length])
                pos += length
                row = by_number.get(number)
                if row is None:
                    continue
                _set_len(values, row, chunk, cls)
            elif wire == 1:
                pos += 8
            elif wire == 5:
                pos += 4
            else:
                raise DecodeError(f"{cls.__name__}: unsupported wire type {wire}")
        if pos != end:
            raise DecodeError(f"{cls.__name__}: trailing bytes")
        try:
            return cls(**values)
        except TypeError as exc:  # pragma: no cover - schema/dataclass mismatch is a bug
            raise DecodeError(str(exc)) from exc


def _set_len(values: dict[str, Any], row: tuple[Any, ...], chunk: bytes, cls: type) -> None:
    attr, kind = row[1], row[2]
    if kind in (STRING, OPT_STRING):
        try:
            values[attr] = chunk.decode()
        except UnicodeDecodeError as exc:
            raise DecodeError(f"{cls.__name__}.{attr}: invalid UTF-8") from exc
    elif kind in (BYTES, OPT_BYTES):
        values[attr] = chunk
    elif kind == VALUE:
        values[attr] = _Value.decode(chunk).content
    elif kind == VOID:
        values[attr] = True
    elif kind == MSG:
        values[attr] = row[3].decode(chunk)
    elif kind == REP_UINT:
        items = values.setdefault(attr, [])
        pos = 0
        while pos < len(chunk):
            item, pos = _get_varint(chunk, pos)
            items.append(item)
    elif kind == REP_STRING:
        try:
            values.setdefault(attr, []).append(chunk.decode())
        except UnicodeDecodeError as exc:
            raise DecodeError(f"{cls.__name__}.{attr}: invalid UTF-8") from exc
    elif kind == REP_BYTES:
        values.setdefault(attr, []).append(chunk)
    elif kind == REP_MSG:
        values.setdefault(attr, []).append(row[3].decode(chunk))
    else:
        raise DecodeError(f"{cls.__name__}.{attr}: unexpected length-delimited field")


_INDEXES: dict[type, dict[int, tuple[Any, ...]]] = {}


def _index(cls: type[Message]) -> dict[int, tuple[Any, ...]]:
    index = _INDEXES.get(cls)
    if index is None:
        index = {row[0]: row for row in cls._schema}
        _INDEXES[cls] = index
    return index


@dataclass(slots=True)
class _Value(Message):
    content: bytes = b""
    _schema: ClassVar = ((1, "content", BYTES),)
