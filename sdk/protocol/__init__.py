"""The Restate service invocation protocol (v5, v6): messages and framing.

Shared by the SDK (which answers invocations) and the broker (which makes them).
"""

from ._framing import (
    HEADER_SIZE,
    REQUESTED_ACK,
    Frame,
    FrameDecoder,
    decode_all,
    decode_body,
    encode,
    encode_raw,
)
from ._messages import (
    CANCEL_SIGNAL,
    FIRST_AWAKEABLE_SIGNAL,
    MESSAGE_TYPES,
    TYPE_CODES,
    AttachInvocationCommand,
    AttachInvocationCompletionNotification,
    CallCommand,
    CallCompletionNotification,
    CallInvocationIdCompletionNotification,
    ClearAllStateCommand,
    ClearStateCommand,
    CommandAckMessage,
    CompleteAwakeableCommand,
    CompletePromiseCommand,
    CompletePromiseCompletionNotification,
    EndMessage,
    ErrorMessage,
    Failure,
    FailureMetadata,
    GetEagerStateCommand,
    GetEagerStateKeysCommand,
    GetInvocationOutputCommand,
    GetInvocationOutputCompletionNotification,
    GetLazyStateCommand,
    GetLazyStateCompletionNotification,
    GetLazyStateKeysCommand,
    GetLazyStateKeysCompletionNotification,
    GetPromiseCommand,
    GetPromiseCompletionNotification,
    Header,
    IdempotentRequestTarget,
    InputCommand,
    Notification,
    OneWayCallCommand,
    OutputCommand,
    PeekPromiseCommand,
    PeekPromiseCompletionNotification,
    ProposeRunCompletionMessage,
    RunCommand,
    RunCompletionNotification,
    SendSignalCommand,
    SetStateCommand,
    SignalNotification,
    SleepCommand,
    SleepCompletionNotification,
    StartMessage,
    StateEntry,
    StateKeys,
    SuspensionMessage,
    WorkflowTarget,
    is_command,
    is_notification,
)
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


__all__ = [
    "CANCEL_SIGNAL",
    "CONTENT_TYPE_PREFIX",
    "FIRST_AWAKEABLE_SIGNAL",
    "HEADER_SIZE",
    "MAX_VERSION",
    "MESSAGE_TYPES",
    "MIN_VERSION",
    "REQUESTED_ACK",
    "TYPE_CODES",
    "AttachInvocationCommand",
    "AttachInvocationCompletionNotification",
    "CallCommand",
    "CallCompletionNotification",
    "CallInvocationIdCompletionNotification",
    "ClearAllStateCommand",
    "ClearStateCommand",
    "CommandAckMessage",
    "CompleteAwakeableCommand",
    "CompletePromiseCommand",
    "CompletePromiseCompletionNotification",
    "DecodeError",
    "EndMessage",
    "ErrorMessage",
    "Failure",
    "FailureMetadata",
    "Frame",
    "FrameDecoder",
    "GetEagerStateCommand",
    "GetEagerStateKeysCommand",
    "GetInvocationOutputCommand",
    "GetInvocationOutputCompletionNotification",
    "GetLazyStateCommand",
    "GetLazyStateCompletionNotification",
    "GetLazyStateKeysCommand",
    "GetLazyStateKeysCompletionNotification",
    "GetPromiseCommand",
    "GetPromiseCompletionNotification",
    "Header",
    "IdempotentRequestTarget",
    "InputCommand",
    "Message",
    "Notification",
    "OneWayCallCommand",
    "OutputCommand",
    "PeekPromiseCommand",
    "PeekPromiseCompletionNotification",
    "ProposeRunCompletionMessage",
    "RunCommand",
    "RunCompletionNotification",
    "SendSignalCommand",
    "SetStateCommand",
    "SignalNotification",
    "SleepCommand",
    "SleepCompletionNotification",
    "StartMessage",
    "StateEntry",
    "StateKeys",
    "SuspensionMessage",
    "WorkflowTarget",
    "content_type",
    "decode_all",
    "decode_body",
    "encode",
    "encode_raw",
    "is_command",
    "is_notification",
    "parse_content_type",
]
