"""Kafka record keys are any bytes; object and workflow keys are strings.

The mapping, documented for users: a key that is valid UTF-8 is used as is. Any other key
(and a UTF-8 key that itself starts with the prefix, so that the mapping stays one-to-one)
becomes ``b64:`` followed by its standard base64 encoding. ``decode_key`` reverses it.
"""

from __future__ import annotations

import base64

KEY_PREFIX = "b64:"


def encode_key(raw: bytes) -> str:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return KEY_PREFIX + base64.b64encode(raw).decode()
    if text.startswith(KEY_PREFIX):
        return KEY_PREFIX + base64.b64encode(raw).decode()
    return text


def decode_key(key: str) -> bytes:
    if key.startswith(KEY_PREFIX):
        return base64.b64decode(key[len(KEY_PREFIX) :])
    return key.encode()
