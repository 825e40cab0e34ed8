from __future__ import annotations

import abc
import bisect
from collections.abc import Iterator

# One column family per table.
COLUMN_FAMILIES = (
    "meta",  # applied log position, partition count
    "schema",  # deployments and services
    "status",  # invocation id -> InvocationStatus
    "running",  # invocation id -> b"" for each status in phase INVOKED (restarted on recovery)
    "journal",  # invocation id + u32 index -> journal entry
    "state",  # service \0 key \0 state key -> value
    "inbox",  # service \0 key \0 u64 seq -> invocation id (exclusive handlers, FIFO)
    "locks",  # service \0 key -> invocation id holding the key
    "timers",  # u64 fire time + timer id -> Timer
    "promises",  # service \0 key \0 name -> Promise
    "expiry",  # u64 expiry time + invocation id -> b"" (completed invocations kept for attach)
    "kafka_clusters",  # cluster name -> JSON (subscriptions/)
    "subscriptions",  # subscription name -> JSON (subscriptions/)
    "kafka_dedup",  # producer id (hash of subscription, topic, partition) -> u64 last offset
    "kafka_dlq",  # pending dead-letter records, deleted once delivered (ingress/kafka)
    "outbox",  # cluster \0 u32 egress partition + u64 seq -> OutboxEntry (Kafka egress)
    "shuffle",  # u32 target partition + u64 seq -> command for it (partition/lifecycle/shuffle.py)
)


class Store(abc.ABC):
    """A key-value store with one namespace per table and atomic multi-table writes."""

    @abc.abstractmethod
    def get(self, cf: str, key: bytes) -> bytes | None: ...

    @abc.abstractmethod
    def scan(self, cf: str, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        """Entries whose key starts with prefix, in key order."""

    @abc.abstractmethod
    def write(self, changes: dict[tuple[str, bytes], bytes | None]) -> None:
        """Apply puts (bytes) and deletes (None) atomically."""

    @abc.abstractmethod
    def close(self) -> None: ...

    def sync(self) -> None:  # noqa: B027 - optional: nothing to do for a store durable per write
        """Make every write so far survive a machine crash (then the log may be trimmed)."""


class Transaction:
    """Reads see this transaction's own writes; ``commit`` writes them in one batch."""

    __slots__ = ("_changes", "_keys", "_store")

    def __init__(self, store: Store) -> None:
        self._store = store
        self._changes: dict[tuple[str, bytes], bytes | None] = {}
        # Changed keys per table, sorted: a prefix scan inside a big batch (thousands of
        # Kafka records in one group commit) stays a bisect instead of a pass over them all.
        self._keys: dict[str, list[bytes]] = {}

    def get(self, cf: str, key: bytes) -> bytes | None:
        k = (cf, key)
        if k in self._changes:
            return self._changes[k]
        return self._store.get(cf, key)

    def _touch(self, cf: str, key: bytes) -> None:
        if (cf, key) not in self._changes:
            bisect.insort(self._keys.setdefault(cf, []), key)

    def put(self, cf: str, key: bytes, value: bytes) -> None:
        self._touch(cf, key)
        self._changes[(cf, key)] = value

    def delete(self, cf: str, key: bytes) -> None:
        self._touch(cf, key)
        self._changes[(cf, key)] = None

    def scan(self, cf: str, prefix: bytes) -> list[tuple[bytes, bytes]]:
        merged: dict[bytes, bytes | None] = dict(self._store.scan(cf, prefix))
        keys = self._keys.get(cf, ())
        i = bisect.bisect_left(keys, prefix)
        while i < len(keys) and keys[i].startswith(prefix):
            merged[keys[i]] = self._changes[(cf, keys[i])]
            i += 1
        return sorted((k, v) for k, v in merged.items() if v is not None)

    def commit(self) -> None:
        if self._changes:
            self._store.write(self._changes)
            self._changes = {}
            self._keys = {}
