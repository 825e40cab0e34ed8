"""The Restate service invocation protocol (v5, v6): messages and framing.

Shared by the SDK (which answers invocations) and the broker (which makes them).
"""

from ._framing import HEADER_SIZE, REQUESTED_ACK, Frame, FrameDecoder, decode_all, decode_body, encode, encode_raw
from ._messages import *  # noqa: F403 - the message set is this package's public surface
from ._messages import MESSAGE_TYPES, TYPE_CODES, is_command, is_notification
from ._proto import DecodeError, Message

MIN_VERSION = 5
MAX_VERSION = 6
CONTENT_TYPE_PREFIX = "application/vnd.restate.invocation.v"


def content_type(version: int) -> str:
    return f"{CONTENT_TYPE_PREFIX}{version}"


def parse_content_type(value: str) -> int | None:
    """The protocol version named by a content-type header, or None if it names none."""
    value = value.split(";", 1)[0].strip()
    if not value.startswith(CONTENT_TYPE_PREFIX):
        return None
    try:
        return int(value[len(CONTENT_TYPE_PREFIX) :])
    except ValueError:
        return None
