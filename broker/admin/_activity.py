"""GET /activity: what the broker still has to do, and whether that is nothing ("quiet").

Work moves downstream, and back (a call from a running handler inboxes another invocation,
a sleep becomes a timer):

    Kafka records ─► log, not yet applied ─► inbox, timers ─► running ─► outbox ─► Kafka
                                                   ▲              │      dead letters ─► Kafka
                                                   └──────────────┘

Everything is read in one turn of the event loop, so that nothing moves between two tables
while they are read; the tables read hold only unfinished work (a few rows each), except the
timers, whose retention timers (one per completed invocation kept for attach) are skipped by
their key, without decoding a row, and whose timers of completed (killed) invocations do not
count. Quiet means: no record taken and unfinished, no record
left behind the log end (unless paused), nothing appended and not applied, no invocation
running, queued, sleeping, backing off or scheduled, and no outbox or dead-letter row left.
An invocation waiting on an awakeable or a promise is not counted: only its resolver moves it.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Any

from sluice.broker.partition._outbox import parse_outbox_key
from sluice.broker.partition._records import Phase, Status, TimerKind
from sluice.broker.storage import Store

if TYPE_CHECKING:
    from sluice.broker.server import Broker

_U32 = struct.Struct(">I")
_TIMER_NAMES = {
    TimerKind.SLEEP: "sleeping",
    TimerKind.RETRY: "backing_off",
    TimerKind.START: "scheduled",
}


def _unfinished(store: Store, iid: bytes) -> bool:
    """A timer of a killed or cancelled invocation stays until due, and then does nothing."""
    raw = store.get("status", iid)
    return raw is not None and Status.decode(raw).phase != Phase.COMPLETED


def activity(broker: Broker) -> dict[str, Any]:
    """The broker's unfinished work, by where it waits, and ``quiet``: none is left."""
    store = broker.tables
    subscriptions = []
    for name, c in sorted(broker.subscriptions.consumers.items()):
        status = c.to_json()  # (its partitions' lag: log end as last seen, minus position)
        subscriptions.append(
            {
                "name": name,
                "state": status["state"],
                "in_flight": c.in_flight,
                "peak_in_flight": c.peak_in_flight,
                "pending": c.load() - c.in_flight,  # records appended, not yet durable
                "lag": sum(p["lag"] for p in status["partitions"]),
            }
        )
    invocations = {"attempts": broker.invoker.load, "running": 0, "inboxed": 0}
    invocations.update(dict.fromkeys(_TIMER_NAMES.values(), 0))
    invocations["running"] = sum(1 for _ in store.scan("running", b""))
    invocations["inboxed"] = sum(1 for _ in store.scan("inbox", b""))
    for k, _ in store.scan("timers", b""):
        # key: u64 fire time, invocation id, u32 kind, u32 completion id (partition/_context)
        timer = _TIMER_NAMES.get(_U32.unpack_from(k, len(k) - 8)[0])
        if timer is not None and _unfinished(store, k[8:-8]):
            invocations[timer] += 1
    sinks: dict[tuple[str, int], int] = {}
    for k, _ in store.scan("outbox", b""):
        cluster, sink, _ = parse_outbox_key(k)
        sinks[cluster, sink] = sinks.get((cluster, sink), 0) + 1
    egress = [{"cluster": c, "partition": s, "rows": n} for (c, s), n in sorted(sinks.items())]
    dead_letters = sum(1 for _ in store.scan("kafka_dlq", b""))
    unapplied = sum(int(part.log.tail) - 1 - part.processor.applied for part in broker.parts)
    quiet = (
        unapplied == 0
        and not any(invocations.values())
        and not egress
        and not dead_letters
        and all(
            not s["in_flight"] and not s["pending"] and (not s["lag"] or s["state"] == "paused")
            for s in subscriptions
        )
    )
    return {
        "quiet": quiet,
        "log": {"unapplied": unapplied},
        "invocations": invocations,
        "subscriptions": subscriptions,
        "egress": egress,
        "dead_letters": dead_letters,
    }
