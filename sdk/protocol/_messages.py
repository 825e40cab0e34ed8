"""Restate service protocol v5/v6 messages, written from the public spec.

Message type codes: control frames 0x0000-0x03FF, commands 0x0400-0x7FFF, notifications
0x8000-0xFBFF. Every notification shares one shape (`Notification`), so the concrete
notification classes differ only in their type code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from ._proto import (
    BOOL,
    BYTES,
    MSG,
    OPT_BYTES,
    OPT_STRING,
    OPT_UINT,
    REP_BYTES,
    REP_MSG,
    REP_STRING,
    REP_UINT,
    STRING,
    UINT,
    VALUE,
    VOID,
    Message,
)

# --- nested -------------------------------------------------------------------------------


@dataclass(slots=True)
class Header(Message):
    key: str = ""
    value: str = ""
    _schema: ClassVar = ((1, "key", STRING), (2, "value", STRING))


@dataclass(slots=True)
class FailureMetadata(Message):
    key: str = ""
    value: str = ""
    _schema: ClassVar = ((1, "key", STRING), (2, "value", STRING))


@dataclass(slots=True)
class Failure(Message):
    code: int = 0
    message: str = ""
    metadata: list[FailureMetadata] = field(default_factory=list)
    _schema: ClassVar = (
        (1, "code", UINT),
        (2, "message", STRING),
        (3, "metadata", REP_MSG, FailureMetadata),
    )


@dataclass(slots=True)
class StateKeys(Message):
    keys: list[bytes] = field(default_factory=list)
    _schema: ClassVar = ((1, "keys", REP_BYTES),)


@dataclass(slots=True)
class StateEntry(Message):
    key: bytes = b""
    value: bytes = b""
    _schema: ClassVar = ((1, "key", BYTES), (2, "value", BYTES))


@dataclass(slots=True)
class WorkflowTarget(Message):
    workflow_name: str = ""
    workflow_key: str = ""
    _schema: ClassVar = ((1, "workflow_name", STRING), (2, "workflow_key", STRING))


@dataclass(slots=True)
class IdempotentRequestTarget(Message):
    service_name: str = ""
    service_key: str | None = None
    handler_name: str = ""
    idempotency_key: str = ""
    _schema: ClassVar = (
        (1, "service_name", STRING),
        (2, "service_key", OPT_STRING),
        (3, "handler_name", STRING),
        (4, "idempotency_key", STRING),
    )


# --- control frames -----------------------------------------------------------------------


@dataclass(slots=True)
class StartMessage(Message):
    id: bytes = b""
    debug_id: str = ""
    known_entries: int = 0
    state_map: list[StateEntry] = field(default_factory=list)
    partial_state: bool = False
    key: str = ""
    retry_count_since_last_stored_entry: int = 0
    duration_since_last_stored_entry: int = 0
    random_seed: int = 0  # since v6
    _schema: ClassVar = (
        (1, "id", BYTES),
        (2, "debug_id", STRING),
        (3, "known_entries", UINT),
        (4, "state_map", REP_MSG, StateEntry),
        (5, "partial_state", BOOL),
        (6, "key", STRING),
        (7, "retry_count_since_last_stored_entry", UINT),
        (8, "duration_since_last_stored_entry", UINT),
        (9, "random_seed", UINT),
    )


@dataclass(slots=True)
class SuspensionMessage(Message):
    waiting_completions: list[int] = field(default_factory=list)
    waiting_signals: list[int] = field(default_factory=list)
    waiting_named_signals: list[str] = field(default_factory=list)
    _schema: ClassVar = (
        (1, "waiting_completions", REP_UINT),
        (2, "waiting_signals", REP_UINT),
        (3, "waiting_named_signals", REP_STRING),
    )


@dataclass(slots=True)
class ErrorMessage(Message):
    code: int = 0
    message: str = ""
    stacktrace: str = ""
    related_command_index: int | None = None
    related_command_name: str | None = None
    related_command_type: int | None = None
    next_retry_delay: int | None = None
    _schema: ClassVar = (
        (1, "code", UINT),
        (2, "message", STRING),
        (3, "stacktrace", STRING),
        (4, "related_command_index", OPT_UINT),
        (5, "related_command_name", OPT_STRING),
        (6, "related_command_type", OPT_UINT),
        (8, "next_retry_delay", OPT_UINT),
    )


@dataclass(slots=True)
class EndMessage(Message):
    _schema: ClassVar = ()


@dataclass(slots=True)
class CommandAckMessage(Message):
    command_index: int = 0
    _schema: ClassVar = ((1, "command_index", UINT),)


@dataclass(slots=True)
class ProposeRunCompletionMessage(Message):
    result_completion_id: int = 0
    value: bytes | None = None
    failure: Failure | None = None
    _schema: ClassVar = (
        (1, "result_completion_id", UINT),
        # Unlike commands, the proposal carries raw bytes, not a `Value` submessage.
        (14, "value", OPT_BYTES),
        (15, "failure", MSG, Failure),
    )


# --- commands -----------------------------------------------------------------------------


@dataclass(slots=True)
class InputCommand(Message):
    headers: list[Header] = field(default_factory=list)
    value: bytes | None = None
    name: str = ""
    _schema: ClassVar = (
        (1, "headers", REP_MSG, Header),
        (14, "value", VALUE),
        (12, "name", STRING),
    )


@dataclass(slots=True)
class OutputCommand(Message):
    value: bytes | None = None
    failure: Failure | None = None
    name: str = ""
    _schema: ClassVar = (
        (14, "value", VALUE),
        (15, "failure", MSG, Failure),
        (12, "name", STRING),
    )


@dataclass(slots=True)
class GetLazyStateCommand(Message):
    key: bytes = b""
    result_completion_id: int = 0
    name: str = ""
    _schema: ClassVar = (
        (1, "key", BYTES),
        (11, "result_completion_id", UINT),
        (12, "name", STRING),
    )


@dataclass(slots=True)
class SetStateCommand(Message):
    key: bytes = b""
    value: bytes | None = None
    name: str = ""
    _schema: ClassVar = ((1, "key", BYTES), (3, "value", VALUE), (12, "name", STRING))


@dataclass(slots=True)
class ClearStateCommand(Message):
    key: bytes = b""
    name: str = ""
    _schema: ClassVar = ((1, "key", BYTES), (12, "name", STRING))


@dataclass(slots=True)
class ClearAllStateCommand(Message):
    name: str = ""
    _schema: ClassVar = ((12, "name", STRING),)


@dataclass(slots=True)
class GetLazyStateKeysCommand(Message):
    result_completion_id: int = 0
    name: str = ""
    _schema: ClassVar = ((11, "result_completion_id", UINT), (12, "name", STRING))


@dataclass(slots=True)
class GetEagerStateCommand(Message):
    key: bytes = b""
    void: bool = False
    value: bytes | None = None
    name: str = ""
    _schema: ClassVar = (
        (1, "key", BYTES),
        (13, "void", VOID),
        (14, "value", VALUE),
        (12, "name", STRING),
    )


@dataclass(slots=True)
class GetEagerStateKeysCommand(Message):
    value: StateKeys | None = None
    name: str = ""
    _schema: ClassVar = ((14, "value", MSG, StateKeys), (12, "name", STRING))


@dataclass(slots=True)
class GetPromiseCommand(Message):
    key: str = ""
    result_completion_id: int = 0
    name: str = ""
    _schema: ClassVar = (
        (1, "key", STRING),
        (11, "result_completion_id", UINT),
        (12, "name", STRING),
    )


@dataclass(slots=True)
class PeekPromiseCommand(Message):
    key: str = ""
    result_completion_id: int = 0
    name: str = ""
    _schema: ClassVar = (
        (1, "key", STRING),
        (11, "result_completion_id", UINT),
        (12, "name", STRING),
    )


@dataclass(slots=True)
class CompletePromiseCommand(Message):
    key: str = ""
    completion_value: bytes | None = None
    completion_failure: Failure | None = None
    result_completion_id: int = 0
    name: str = ""
    _schema: ClassVar = (
        (1, "key", STRING),
        (2, "completion_value", VALUE),
        (3, "completion_failure", MSG, Failure),
        (11, "result_completion_id", UINT),
        (12, "name", STRING),
    )


@dataclass(slots=True)
class SleepCommand(Message):
    wake_up_time: int = 0  # milliseconds since the UNIX epoch
    result_completion_id: int = 0
    name: str = ""
    _schema: ClassVar = (
        (1, "wake_up_time", UINT),
        (11, "result_completion_id", UINT),
        (12, "name", STRING),
    )


@dataclass(slots=True)
class CallCommand(Message):
    service_name: str = ""
    handler_name: str = ""
    parameter: bytes = b""
    headers: list[Header] = field(default_factory=list)
    key: str = ""
    idempotency_key: str | None = None
    invocation_id_notification_idx: int = 0
    result_completion_id: int = 0
    name: str = ""
    _schema: ClassVar = (
        (1, "service_name", STRING),
        (2, "handler_name", STRING),
        (3, "parameter", BYTES),
        (4, "headers", REP_MSG, Header),
        (5, "key", STRING),
        (6, "idempotency_key", OPT_STRING),
        (10, "invocation_id_notification_idx", UINT),
        (11, "result_completion_id", UINT),
        (12, "name", STRING),
    )


@dataclass(slots=True)
class OneWayCallCommand(Message):
    service_name: str = ""
    handler_name: str = ""
    parameter: bytes = b""
    invoke_time: int = 0  # milliseconds since the UNIX epoch; 0 = now
    headers: list[Header] = field(default_factory=list)
    key: str = ""
    idempotency_key: str | None = None
    invocation_id_notification_idx: int = 0
    name: str = ""
    _schema: ClassVar = (
        (1, "service_name", STRING),
        (2, "handler_name", STRING),
        (3, "parameter", BYTES),
        (4, "invoke_time", UINT),
        (5, "headers", REP_MSG, Header),
        (6, "key", STRING),
        (7, "idempotency_key", OPT_STRING),
        (10, "invocation_id_notification_idx", UINT),
        (12, "name", STRING),
    )


@dataclass(slots=True)
class SendSignalCommand(Message):
    target_invocation_id: str = ""
    idx: int | None = None
    signal_name: str | None = None
    void: bool = False
    value: bytes | None = None
    failure: Failure | None = None
    entry_name: str = ""
    _schema: ClassVar = (
        (1, "target_invocation_id", STRING),
        (2, "idx", OPT_UINT),
        (3, "signal_name", OPT_STRING),
        (4, "void", VOID),
        (5, "value", VALUE),
        (6, "failure", MSG, Failure),
        (12, "entry_name", STRING),
    )


@dataclass(slots=True)
class RunCommand(Message):
    result_completion_id: int = 0
    name: str = ""
    _schema: ClassVar = ((11, "result_completion_id", UINT), (12, "name", STRING))


@dataclass(slots=True)
class AttachInvocationCommand(Message):
    invocation_id: str | None = None
    idempotent_request_target: IdempotentRequestTarget | None = None
    workflow_target: WorkflowTarget | None = None
    result_completion_id: int = 0
    name: str = ""
    _schema: ClassVar = (
        (1, "invocation_id", OPT_STRING),
        (3, "idempotent_request_target", MSG, IdempotentRequestTarget),
        (4, "workflow_target", MSG, WorkflowTarget),
        (11, "result_completion_id", UINT),
        (12, "name", STRING),
    )


@dataclass(slots=True)
class GetInvocationOutputCommand(AttachInvocationCommand):
    pass


@dataclass(slots=True)
class CompleteAwakeableCommand(Message):
    awakeable_id: str = ""
    value: bytes | None = None
    failure: Failure | None = None
    name: str = ""
    _schema: ClassVar = (
        (1, "awakeable_id", STRING),
        (2, "value", VALUE),
        (3, "failure", MSG, Failure),
        (12, "name", STRING),
    )


# --- notifications ------------------------------------------------------------------------


@dataclass(slots=True)
class Notification(Message):
    """The shared shape of every notification: an id (completion or signal) and a result."""

    completion_id: int | None = None
    signal_idx: int | None = None
    signal_name: str | None = None
    void: bool = False
    value: bytes | None = None
    failure: Failure | None = None
    invocation_id: str | None = None
    state_keys: StateKeys | None = None
    _schema: ClassVar = (
        (1, "completion_id", OPT_UINT),
        (2, "signal_idx", OPT_UINT),
        (3, "signal_name", OPT_STRING),
        (4, "void", VOID),
        (5, "value", VALUE),
        (6, "failure", MSG, Failure),
        (16, "invocation_id", OPT_STRING),
        (17, "state_keys", MSG, StateKeys),
    )


@dataclass(slots=True)
class GetLazyStateCompletionNotification(Notification):
    pass


@dataclass(slots=True)
class GetLazyStateKeysCompletionNotification(Notification):
    pass


@dataclass(slots=True)
class GetPromiseCompletionNotification(Notification):
    pass


@dataclass(slots=True)
class PeekPromiseCompletionNotification(Notification):
    pass


@dataclass(slots=True)
class CompletePromiseCompletionNotification(Notification):
    pass


@dataclass(slots=True)
class SleepCompletionNotification(Notification):
    pass


@dataclass(slots=True)
class CallCompletionNotification(Notification):
    pass


@dataclass(slots=True)
class CallInvocationIdCompletionNotification(Notification):
    pass


@dataclass(slots=True)
class RunCompletionNotification(Notification):
    pass


@dataclass(slots=True)
class AttachInvocationCompletionNotification(Notification):
    pass


@dataclass(slots=True)
class GetInvocationOutputCompletionNotification(Notification):
    pass


@dataclass(slots=True)
class SignalNotification(Notification):
    pass


# Built-in signal indexes; user awakeables start after the reserved range.
CANCEL_SIGNAL = 1
FIRST_AWAKEABLE_SIGNAL = 17

MESSAGE_TYPES: dict[int, type[Message]] = {
    0x0000: StartMessage,
    0x0001: SuspensionMessage,
    0x0002: ErrorMessage,
    0x0003: EndMessage,
    0x0004: CommandAckMessage,
    0x0005: ProposeRunCompletionMessage,
    0x0400: InputCommand,
    0x0401: OutputCommand,
    0x0402: GetLazyStateCommand,
    0x0403: SetStateCommand,
    0x0404: ClearStateCommand,
    0x0405: ClearAllStateCommand,
    0x0406: GetLazyStateKeysCommand,
    0x0407: GetEagerStateCommand,
    0x0408: GetEagerStateKeysCommand,
    0x0409: GetPromiseCommand,
    0x040A: PeekPromiseCommand,
    0x040B: CompletePromiseCommand,
    0x040C: SleepCommand,
    0x040D: CallCommand,
    0x040E: OneWayCallCommand,
    0x0410: SendSignalCommand,
    0x0411: RunCommand,
    0x0412: AttachInvocationCommand,
    0x0413: GetInvocationOutputCommand,
    0x0414: CompleteAwakeableCommand,
    0x8002: GetLazyStateCompletionNotification,
    0x8006: GetLazyStateKeysCompletionNotification,
    0x8009: GetPromiseCompletionNotification,
    0x800A: PeekPromiseCompletionNotification,
    0x800B: CompletePromiseCompletionNotification,
    0x800C: SleepCompletionNotification,
    0x800D: CallCompletionNotification,
    0x800E: CallInvocationIdCompletionNotification,
    0x8011: RunCompletionNotification,
    0x8012: AttachInvocationCompletionNotification,
    0x8013: GetInvocationOutputCompletionNotification,
    0xFBFF: SignalNotification,
}
TYPE_CODES: dict[type[Message], int] = {cls: code for code, cls in MESSAGE_TYPES.items()}


def is_command(type_code: int) -> bool:
    return 0x0400 <= type_code < 0x8000


def is_notification(type_code: int) -> bool:
    return 0x8000 <= type_code < 0xFC00
