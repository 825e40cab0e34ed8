"""Identifiers as types: invocation ids, partition keys, log positions, awakeable ids.

An invocation id is 24 bytes, like Restate's: the 8-byte partition key, then a 16-byte uuid.
Its string form is ``inv_1`` followed by the base64url (unpadded) encoding of those bytes.
"""

from __future__ import annotations

import base64
import hashlib
import os
import struct
from typing import NewType

Lsn = NewType("Lsn", int)
PartitionKey = NewType("PartitionKey", int)

_PK = struct.Struct(">Q")
_SIGNAL = struct.Struct(">I")
INVOCATION_PREFIX = "inv_1"
AWAKEABLE_PREFIX = "prom_1"
SIGN_PREFIX = "sign_1"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str, length: int, what: str) -> bytes:
    """``text`` decoded (base64url, padding optional); ``length`` bytes, or a ValueError that
    names ``what``."""
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except ValueError as e:
        raise ValueError(f"{what} is not valid base64url") from e
    if len(raw) != length:
        raise ValueError(f"{what} has the wrong length")
    return raw


def partition_key_of(key: str | bytes) -> PartitionKey:
    """The partition key of an object or workflow key: a stable 64-bit hash."""
    raw = key.encode() if isinstance(key, str) else key
    return PartitionKey(int.from_bytes(hashlib.blake2b(raw, digest_size=8).digest(), "big"))


class InvocationId:
    __slots__ = ("_raw", "_str")

    def __init__(self, raw: bytes) -> None:
        if len(raw) != 24:
            raise ValueError("an invocation id is 24 bytes")
        self._raw = raw
        self._str: str | None = None

    @classmethod
    def generate(cls, partition_key: int | None = None) -> InvocationId:
        rnd = os.urandom(24 if partition_key is None else 16)
        if partition_key is None:
            return cls(rnd)
        return cls(_PK.pack(partition_key) + rnd)

    @classmethod
    def derive(cls, partition_key: int, *parts: str | bytes) -> InvocationId:
        """A deterministic id: the same parts always give the same invocation."""
        h = hashlib.blake2b(digest_size=16)
        for part in parts:
            b = part.encode() if isinstance(part, str) else part
            h.update(_SIGNAL.pack(len(b)))
            h.update(b)
        return cls(_PK.pack(partition_key) + h.digest())

    @classmethod
    def parse(cls, text: str) -> InvocationId:
        if not text.startswith(INVOCATION_PREFIX):
            raise ValueError(f"invocation id must start with {INVOCATION_PREFIX!r}")
        return cls(_unb64(text[len(INVOCATION_PREFIX) :], 24, "invocation id"))

    @property
    def raw(self) -> bytes:
        return self._raw

    @property
    def partition_key(self) -> PartitionKey:
        return PartitionKey(_PK.unpack_from(self._raw)[0])

    def __str__(self) -> str:
        if self._str is None:
            self._str = INVOCATION_PREFIX + _b64(self._raw)
        return self._str

    def __repr__(self) -> str:
        return f"InvocationId({self})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, InvocationId) and other._raw == self._raw

    def __hash__(self) -> int:
        return hash(self._raw)


def awakeable_id(invocation: InvocationId, signal_index: int) -> str:
    return AWAKEABLE_PREFIX + _b64(invocation.raw + _SIGNAL.pack(signal_index))


def parse_awakeable_id(text: str) -> tuple[InvocationId, int]:
    """The invocation and signal index an awakeable id points at (``prom_1`` or ``sign_1``)."""
    for prefix in (AWAKEABLE_PREFIX, SIGN_PREFIX):
        if text.startswith(prefix):
            raw = _unb64(text[len(prefix) :], 28, "awakeable id")
            return InvocationId(raw[:24]), _SIGNAL.unpack_from(raw, 24)[0]
    raise ValueError(f"awakeable id must start with {AWAKEABLE_PREFIX!r}")
