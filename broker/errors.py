"""The broker's one failure policy.

Two kinds of trouble, handled in two ways:

- Retriable (Kafka unreachable, a handler down, a schema registry that does not answer):
  an ordinary ``Exception``. The loop that met it backs off, retries, and says why in its
  status.
- Fatal (the log or the tables could not make something durable): a ``Fatal``. It derives
  from ``BaseException`` so that no ``except Exception`` retry loop can swallow it and
  carry on as if the data were safe (a failed fsync is never retried: the kernel may
  already have dropped the dirty pages). The broker then fails every pending waiter with
  a 503, reports itself unhealthy, and exits with ``EXIT_FATAL`` so that its supervisor
  restarts it; recovery cuts the unsynced tail and replays the rest.

  One fatal error is resumed in the same process: ``LogInterrupted``, a Kafka log whose
  Kafka lost or refused an append. What the log holds is Kafka's, not this process's (no page
  cache to distrust): the broker is stopped and a new one is started on the same data
  directory and ports, which is what a supervisor's restart would do (broker/cli.py).
"""

from __future__ import annotations

# The process exit status after a fatal error: distinct from a crash (1) and a usage
# error (2), so a supervisor or a test can tell "restart me" apart.
EXIT_FATAL = 3


class Fatal(BaseException):
    """The log or the tables failed; nothing more can be made durable in this process."""

    def __init__(self, what: str, cause: BaseException | None = None) -> None:
        detail = f": {cause}" if cause is not None else ""
        super().__init__(f"{what}{detail}")
        self.what = what
        self.__cause__ = cause

    @property
    def reason(self) -> str:
        return str(self.args[0])


class LogError(Fatal):
    """Writing or syncing the log failed (EIO, ENOSPC, ...)."""


class LogInterrupted(LogError):
    """The Kafka log's Kafka lost or refused an append (its outcome is unknown), while what
    the log holds is intact: a new broker in this process goes on from it."""


class StorageError(Fatal):
    """A table read or write failed (a RocksDB error)."""
