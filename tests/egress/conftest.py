"""Fixtures for the egress tests: a read_committed reader of output topics and its checks,
an Avro reader (the egress services and the schema registries are in tests/conftest.py)."""

from __future__ import annotations

import json
import struct
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from sluice.connectors.kafka import Consumer, KafkaMessage, TopicPartitionOffset
from sluice.connectors.kafka._client import OFFSET_BEGINNING
from sluice.connectors.serde import AvroSerde, SchemaRegistry
from tests.broker.conftest import ServiceProcess
from tests.ingress_kafka.conftest import Admin, admin, new_topic, produce  # noqa: F401
from tests.kafka import Tansu
from tests.quiet import wait_quiet


@dataclass
class Out:
    partition: int
    offset: int
    key: bytes | None
    value: Any
    headers: dict[str, str]

    @classmethod
    def of(cls, m: KafkaMessage, decode: Callable[[bytes], Any] = json.loads) -> Out:
        """An output record as the tests read it: a decoded (JSON) value, text headers."""
        return cls(
            m.partition,
            m.offset,
            m.key,
            decode(m.value) if m.value else None,
            {k: (v or b"").decode() for k, v in m.headers},
        )

    @property
    def seq(self) -> tuple[str, int, int]:
        h = self.headers
        return h["sluice-producer"], int(h["sluice-seq"]), int(h["sluice-part"])


def read_output(
    kafka: Tansu,
    topic: str,
    want: int,
    within: float = 60.0,
    *,
    committed: bool = True,
    decode: Callable[[bytes], Any] = json.loads,
    brokers: Iterable[int] | None = None,
) -> list[Out]:
    """Committed records of ``topic`` (read_committed; ``committed=False``: every record, for
    diagnostics), values through ``decode``. Once ``want`` arrived, it waits until the brokers
    are quiet (tests/quiet.py; ``brokers``: their admin ports, default those running) and then
    reads on to each partition's high watermark: a duplicate still on its way is counted too.
    Fewer than ``want`` within ``within`` seconds: those."""
    c = Consumer(
        {
            "bootstrap.servers": kafka.bootstrap,
            "group.id": "egress-test-reader",
            "isolation.level": "read_committed" if committed else "read_uncommitted",
        }
    )
    try:
        parts = c.partitions(topic) or []
        tps = [TopicPartitionOffset(topic, n, OFFSET_BEGINNING) for n in parts]
        c.assign(tps)
        out: list[Out] = []
        deadline = time.monotonic() + within
        while len(out) < want and time.monotonic() < deadline:
            out += (Out.of(m, decode) for m in c.consume(1000, 0.2))
        if len(out) < want:
            return out
        wait_quiet(brokers, within=max(deadline - time.monotonic(), 30.0))
        ends = {n: c.watermarks(topic, n) for n in parts}  # (low, high) now that it is quiet
        deadline = time.monotonic() + 30
        while True:
            at = c.positions(tps)  # (past the transaction markers too)
            behind = {
                n: (at[topic, n], hi)
                for n, (lo, hi) in ends.items()
                if lo < hi and at[topic, n] < hi
            }
            if not behind:
                return out
            if time.monotonic() > deadline:
                raise AssertionError(f"{topic}: (position, high watermark) {behind} after 30 s")
            out += (Out.of(m, decode) for m in c.consume(1000, 0.2))
    finally:
        c.close()


def check_exactly_once(
    out: list[Out], want: dict[int, bytes | None], *, ordered: bool = True
) -> None:
    """Each input ``i`` (value["i"]) exactly once, unique sequence headers, and (``ordered``)
    per-key input order."""
    seen: dict[int, int] = {}
    for o in out:
        seen[o.value["i"]] = seen.get(o.value["i"], 0) + 1
    lost = sorted(set(want) - set(seen))
    dups = sorted(i for i, n in seen.items() if n > 1)
    assert not lost and not dups, (
        f"lost {len(lost)} {lost[:10]}, duplicated {len(dups)} {dups[:10]}"
    )
    seqs = [o.seq for o in out]
    assert len(set(seqs)) == len(seqs), "a sequence header repeats"
    for o in out:
        assert o.key == want[o.value["i"]], f"record {o.value['i']}: key {o.key!r}"
    # Per key, in partition-offset order, the inputs come in input order (i increases).
    by_key: dict[bytes | None, list[Out]] = {}
    for o in sorted(out, key=lambda o: (o.partition, o.offset)):
        by_key.setdefault(o.key, []).append(o)
    for key, recs in by_key.items():
        ii = [r.value["i"] for r in recs]
        assert ii == sorted(ii) or not ordered, f"key {key!r} out of order: {ii[:20]}"
        # and the sequence numbers of one producer increase along a key
        by_prod: dict[str, list[tuple[int, int]]] = {}
        for r in recs:
            by_prod.setdefault(r.seq[0], []).append(r.seq[1:])
        for s in by_prod.values():
            assert s == sorted(s), f"key {key!r}: sequence numbers out of order"


@pytest.fixture(scope="session")
def restate_egress_services() -> Iterator[ServiceProcess]:
    with ServiceProcess("tests.egress.restate_services") as svc:
        yield svc


def avro_reader(registry: SchemaRegistry, subject: str, ids: set[int]) -> Callable[[bytes], Any]:
    """Decodes a wire-format value through the registry; collects the schema ids seen."""
    serde = AvroSerde(registry, subject)

    def decode(value: bytes) -> Any:
        magic, schema_id = struct.unpack(">bI", value[:5])
        assert magic == 0, f"magic byte {magic}: not the Schema Registry wire format"
        ids.add(schema_id)
        return json.loads(serde.decode(value))

    return decode
