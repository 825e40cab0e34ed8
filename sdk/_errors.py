"""User-facing errors and the SDK's own control flow.

A `TerminalError` ends the invocation with a failure that callers see; any other `Exception`
fails only the attempt, and the broker retries it. Control flow (suspension) derives from
`BaseException`, so a handler's `except Exception` cannot swallow it.
"""

from __future__ import annotations

# Protocol error codes (ErrorMessage.code) besides HTTP statuses.
JOURNAL_MISMATCH = 570
PROTOCOL_VIOLATION = 571


class TerminalError(Exception):
    """Fails the invocation without retry; the message and status reach the caller.

    Raise it for errors that retrying cannot fix (bad input, a business rule). Callers
    awaiting this invocation get a `TerminalError` with the same message and status code.
    """

    def __init__(self, message: str, status_code: int = 500) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, status_code={self.status_code})"


class CancelledError(TerminalError):
    """The invocation was cancelled; raised from the await that was pending at the time.

    A handler may catch it to run compensations with the same context, then re-raise.
    """

    def __init__(self, message: str = "cancelled") -> None:
        super().__init__(message, 409)


class TimeoutError(TerminalError):
    """A durable future did not complete within the time given to `ctx.with_timeout`."""

    def __init__(self, message: str = "timeout") -> None:
        super().__init__(message, 408)


class SuspendedError(BaseException):
    """The invocation suspended: the SDK unwinds the handler; the broker resumes it later."""


class ProtocolError(Exception):
    """The journal or the stream disagrees with the handler; reported with an error code."""

    def __init__(
        self, message: str, code: int = PROTOCOL_VIOLATION, *, command_index: int | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.command_index = command_index
