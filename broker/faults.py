"""Fault injection for crash tests: the process SIGKILLs itself at a named point.

``SLUICE_FAULTS="after-kafka-poll=3"`` makes the broker die the 3rd time execution passes
``reached("after-kafka-poll")``; several points are separated by commas, and the first one
to reach its count kills. Without the variable, ``reached`` is one dict lookup.

The points, in the order a Kafka record meets them:

    after-kafka-poll      records fetched from Kafka, not yet appended to the log
    after-log-append      a batch written and fsync'd, not yet applied nor acknowledged
    before-egress-commit  records and marker produced in the egress transaction, no commit
    after-egress-commit   the transaction committed, EgressCommitted not yet in the log

A death is announced on stderr (``sluice fault: ...``) first, so that a test can tell it
from any other death.
"""

from __future__ import annotations

import os
import signal

ENV = "SLUICE_FAULTS"
POINTS = ("after-kafka-poll", "after-log-append", "before-egress-commit", "after-egress-commit")


def parse(spec: str) -> dict[str, int]:
    """``name=N,name=N`` to {name: N}; an unknown name or a count below 1 is an error."""
    armed: dict[str, int] = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        name, _, count = item.partition("=")
        name = name.strip()
        if name not in POINTS:
            raise ValueError(f"{ENV}: unknown fault point {name!r}; known: {', '.join(POINTS)}")
        if not count.strip().isdigit() or int(count) < 1:
            raise ValueError(f"{ENV}: {item!r} needs a count of at least 1, as in {name}=3")
        armed[name] = int(count)
    return armed


_armed = parse(os.environ.get(ENV, ""))


def reached(point: str) -> None:
    """Count one pass through ``point``; at its armed count, SIGKILL this process."""
    left = _armed.get(point)
    if left is None:
        return
    if left > 1:
        _armed[point] = left - 1
        return
    os.write(2, f"sluice fault: SIGKILL at {point}\n".encode())
    os.kill(os.getpid(), signal.SIGKILL)
