"""Fault injection for crash and I/O-error tests.

Kill points: the process SIGKILLs itself at a named point.

``SLUICE_FAULTS="after-kafka-poll=3"`` makes the broker die the 3rd time execution passes
``reached("after-kafka-poll")``; several points are separated by commas, and the first one
to reach its count kills. Without the variable, ``reached`` is one dict lookup.

The points, in the order a Kafka record meets them:

    after-kafka-poll      records fetched from Kafka, not yet appended to the log
    after-log-append      a batch durable (fsync'd, or read back from the Kafka log), not yet
                          applied nor acknowledged
    before-egress-commit  records and marker produced in the egress transaction, no commit
    after-egress-commit   the transaction committed, EgressCommitted not yet in the log

A death is announced on stderr (``sluice fault: ...``) first, so that a test can tell it
from any other death.

Error points: from the N-th pass on, the operation fails with an ``OSError`` (a disk that
broke stays broken). ``log-fsync=2:ENOSPC`` makes the second log sync and every later one
fail with ENOSPC; without ``:ERRNO`` the error is EIO.

    log-fsync             the log's fdatasync of one group commit
    storage-write         one write batch of the tables (RocksDB)
    dead-letter-produce   one delivery of dead letters to Kafka (a cluster that refuses them)

Once points fail the N-th pass only (what broke recovers):

    log-produce           one acknowledgement of the Kafka log, taken as a failed produce
"""

from __future__ import annotations

import errno
import os
import signal

ENV = "SLUICE_FAULTS"
POINTS = ("after-kafka-poll", "after-log-append", "before-egress-commit", "after-egress-commit")
ERROR_POINTS = ("log-fsync", "storage-write", "dead-letter-produce", "log-produce")
ONCE = frozenset({"log-produce"})


def parse(spec: str) -> dict[str, int]:
    """``name=N,name=N`` to {name: N}; an unknown name or a count below 1 is an error."""
    return {name: count for name, (count, _) in _parse(spec).items()}


def _parse(spec: str) -> dict[str, tuple[int, int]]:
    armed: dict[str, tuple[int, int]] = {}
    known = POINTS + ERROR_POINTS
    for item in filter(None, (s.strip() for s in spec.split(","))):
        name, _, count = item.partition("=")
        name = name.strip()
        if name not in known:
            raise ValueError(f"{ENV}: unknown fault point {name!r}; known: {', '.join(known)}")
        count, _, code = count.partition(":")
        if not count.strip().isdigit() or int(count) < 1:
            raise ValueError(f"{ENV}: {item!r} needs a count of at least 1, as in {name}=3")
        err = errno.EIO
        if code:
            if name not in ERROR_POINTS or not isinstance(getattr(errno, code, None), int):
                raise ValueError(
                    f"{ENV}: {item!r}: {code!r} is not an errno name for an error point"
                )
            err = getattr(errno, code)
        armed[name] = (int(count), err)
    return armed


_armed = _parse(os.environ.get(ENV, ""))


def reached(point: str) -> None:
    """Count one pass through ``point``; at its armed count, SIGKILL this process."""
    armed = _armed.get(point)
    if armed is None:
        return
    left, err = armed
    if left > 1:
        _armed[point] = (left - 1, err)
        return
    os.write(2, f"sluice fault: SIGKILL at {point}\n".encode())
    os.kill(os.getpid(), signal.SIGKILL)


def check(point: str) -> None:
    """Count one pass through the error point ``point``; from its armed count on, raise the
    armed ``OSError`` (announced on stderr the first time)."""
    armed = _armed.get(point)
    if armed is None:
        return
    left, err = armed
    if left > 1:
        _armed[point] = (left - 1, err)
        return
    if left == 1:
        os.write(2, f"sluice fault: {errno.errorcode[err]} at {point}\n".encode())
        _armed[point] = (0, err)
        if point in ONCE:
            del _armed[point]
    raise OSError(err, f"{os.strerror(err)} (injected at {point})")
