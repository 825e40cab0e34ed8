"""The outbox in the state machine, commands in and actions out (no Kafka): rows reserved in
input order and filled at completion, ``sluice.Kafka/send``, packed stream-handler batches
(deduplicated and cut by offset), and trimming through EgressCommitted."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import cast

from sluice import protocol as p
from sluice.broker.egress import SinkWorker
from sluice.broker.ids import InvocationId
from sluice.broker.partition import actions as a
from sluice.broker.partition._outbox import (
    EgressCommitted,
    EgressTarget,
    OutboxEntry,
    OutboxReady,
    OutboxState,
    parse_outbox_key,
)
from sluice.broker.partition._records import KafkaIngest, KafkaRecord, Kind, Status
from sluice.broker.partition.lifecycle.egress import pack_batches, pack_messages, records_of
from sluice.connectors.kafka import KafkaMessage
from sluice.connectors.kafka._egress import OutRecord
from tests.broker.test_state_machine import Harness, of


def _rows(h: Harness) -> list[tuple[int, OutboxEntry]]:
    return [(parse_outbox_key(k)[2], OutboxEntry.decode(v)) for k, v in h.store.scan("outbox", b"")]


def _ingest(offsets: range, **kw: object) -> KafkaIngest:
    recs = [
        KafkaRecord(
            offset=o,
            key=f"k{o % 3}",
            input=json.dumps({"i": o}).encode(),
            headers=[p.Header(key="kafka.key", value=f"k{o % 3}")],
        )
        for o in offsets
    ]
    return KafkaIngest(
        subscription="s",
        producer=b"p" * 20,
        topic="in",
        partition=0,
        service="Svc",
        handler="h",
        kind=Kind.SERVICE,
        records=recs,
        **{"output": EgressTarget(cluster="c", topic="out"), **kw},  # type: ignore[arg-type]
    )


def _running(h: Harness) -> list[Status]:
    out = [Status.decode(v) for _, v in h.store.scan("status", b"")]
    return sorted((s for s in out if s.phase == 3), key=lambda s: s.created_at)


def test_rows_are_reserved_in_input_order_and_filled_at_completion() -> None:
    h = Harness()
    h.apply(_ingest(range(3)))
    rows = _rows(h)
    assert [(s, e.state, e.key) for s, e in rows] == [
        (1, OutboxState.PENDING, b"k0"),
        (2, OutboxState.PENDING, b"k1"),
        (3, OutboxState.PENDING, b"k2"),
    ]
    # The second finishes first: its row is READY, but the first is still PENDING.
    by_input: dict[int, InvocationId] = {}
    for _, raw in h.store.scan("status", b""):
        st = Status.decode(raw)
        first = h.store.get("journal", st.id + b"\0\0\0\0")
        assert first is not None
        inp = p.decode_all(first)[0].message
        assert isinstance(inp, p.InputCommand)
        by_input[json.loads(inp.value or b"0")["i"]] = InvocationId(st.id)
    acts = h.effects(by_input[1], 1, p.OutputCommand(value=b'{"r":1}'), p.EndMessage())
    assert of(acts, OutboxReady) == [OutboxReady("c", parse_outbox_key(_key(h, 2))[1])]
    h.effects(by_input[0], 1, p.OutputCommand(value=b"null"), p.EndMessage())
    rows = dict(_rows(h))
    assert rows[1].state == OutboxState.EMPTY  # returned nothing: nothing to send
    assert rows[2].state == OutboxState.READY
    assert [(r.topic, r.key, r.value) for r in rows[2].records] == [("out", b"k1", b'{"r":1}')]
    assert rows[3].state == OutboxState.PENDING


def _key(h: Harness, seq: int) -> bytes:
    return next(k for k, _ in h.store.scan("outbox", b"") if parse_outbox_key(k)[2] == seq)


def test_egress_committed_trims_up_to_its_sequence() -> None:
    h = Harness()
    h.apply(_ingest(range(4)))
    cluster, sink, _ = parse_outbox_key(_key(h, 1))
    h.apply(EgressCommitted(cluster=cluster, sink=sink, upto=2))
    assert [s for s, _ in _rows(h)] == [3, 4]
    h.apply(_ingest(range(4, 5)))  # sequence numbers go on after a trim
    assert [s for s, _ in _rows(h)] == [3, 4, 5]


def test_kafka_send_is_a_ready_row_and_the_caller_gets_an_id() -> None:
    h = Harness()
    h.apply(_ingest(range(1), output=None))
    st = _running(h)[0]
    body = {"topic": "t", "key": "k", "value": {"a": 1}, "headers": {"h": "v"}, "cluster": "c"}
    acts = h.effects(
        InvocationId(st.id),
        1,
        p.OneWayCallCommand(
            service_name="sluice.Kafka",
            handler_name="send",
            parameter=json.dumps(body).encode(),
            invocation_id_notification_idx=1,
        ),
    )
    assert len(of(acts, OutboxReady)) == 1
    assert any(isinstance(x, a.SendToAttempt) for x in acts)  # the invocation id notification
    [(_, row)] = _rows(h)
    [rec] = records_of(row)
    assert (rec.topic, rec.key, rec.value) == ("t", b"k", b'{"a":1}')
    assert [(x.key, x.value) for x in rec.headers] == [("h", "v")]


def test_packed_batches_are_deduplicated_and_cut_by_offset() -> None:
    h = Harness()
    first = _ingest(range(10), batch_max=4)
    pack_batches(first)
    assert [b.offsets for b in first.batches] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert h.apply(first)
    assert len(_running(h)) == 3
    # Read again from offset 6 (a consumer restart), cut into other batches.
    again = _ingest(range(6, 14), batch_max=4)
    pack_batches(again)
    h.apply(again)
    # 6..9 were in; the batch 6..9 of the second poll is gone, 10..13 is new.
    assert _batches(h) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9], [10, 11, 12, 13]]
    overlap = _ingest(range(12, 16), batch_max=10)
    pack_batches(overlap)
    h.apply(overlap)
    assert [14, 15] in _batches(h)  # 12 and 13 were cut off: already ingested
    assert len(_batches(h)) == 5


def _batches(h: Harness) -> list[list[int]]:
    out = []
    for st in _running(h):
        raw = h.store.get("journal", st.id + b"\0\0\0\0")
        assert raw is not None
        inp = p.decode_all(raw)[0].message
        assert isinstance(inp, p.InputCommand)
        out.append([r["offset"] for r in json.loads(inp.value or b"{}")["records"]])
    return sorted(out)


def test_pack_messages_checks_each_value_and_hands_the_rest_to_the_consumer() -> None:
    msgs = [
        KafkaMessage("in", 0, 0, b"k", b'{"i": 0}'),
        KafkaMessage("in", 0, 1, b"k", b'{"i": 1'),  # not JSON
        KafkaMessage("in", 0, 2, b"k", b'1, "x": 2'),  # two values, not one
        KafkaMessage("in", 0, 3, b'q"uote', b" 3 "),  # a key that needs escaping
        KafkaMessage("in", 0, 4, None, b"[4]", [("h", b"v")]),
    ]
    seen: list[int] = []

    def record(m: KafkaMessage) -> KafkaRecord:
        seen.append(m.offset)
        try:
            json.loads(m.value or b"")
        except ValueError:
            return KafkaRecord(offset=m.offset, reason="not JSON", raw_value=m.value)
        return KafkaRecord(
            offset=m.offset,
            key=m.key.decode() if m.key else "",
            input=m.value or b"",
            raw_key=m.key,
        )

    cmd = _ingest(range(0), batch_max=10)
    pack_messages(cmd, msgs, record, max_bytes=1000, keyed=False)
    assert seen == [1, 2, 3]
    assert [r.offset for r in cmd.records] == [1, 2]
    [b] = cmd.batches
    assert b.offsets == [0, 3, 4]
    items = json.loads(b"[" + b.items + b"]")
    assert [(x["key"], x["value"], x["headers"]) for x in items] == [
        ("k", {"i": 0}, {}),
        ('q"uote', 3, {}),
        (None, [4], {"h": "v"}),
    ]


def test_stream_handler_rows_split_the_same_on_the_fast_path() -> None:
    """A stream handler's result row: ``records_of`` (the reference) and the sink's fast
    path give the same records, for values as JSON, as JSON text (``value_json``, what the
    Sluice SDK sends), as base64, and for items that are not records."""
    items = [
        {"key": "a", "value": {"i": 1, "s": "é"}},
        {"key": "b", "value_json": '{"i": 2}'},
        {"value_json": "[3, 4]"},
        {"key": "c", "value_json": "{not json"},  # not a record: sent as the item it is
        {"key": "d", "value": None},
        {"key": "e", "value_b64": "AAE="},
        {"key": "f", "value": 7, "headers": {"h": "v"}},
        42,
    ]
    row = OutboxEntry(
        state=OutboxState.READY,
        topic="out",
        batch=True,
        raw=json.dumps(items).encode(),
        headers=[p.Header(key="static", value="1")],
    )
    want = [(r.topic, r.key, r.value, [(h.key, h.value.encode()) for h in r.headers])
            for r in records_of(row)]  # fmt: skip
    fast: list[OutRecord] = []
    worker = SimpleNamespace(_visible=set())  # nothing of the row is in Kafka yet
    SinkWorker._batch_rows(cast(SinkWorker, worker), 9, row, fast)
    assert [(r.topic, r.key, r.value, r.headers) for r in fast] == want
    assert [(r.seq, r.part) for r in fast] == [(9, i) for i in range(len(items))]
    assert [v for _, _, v, _ in want] == [
        b'{"i":1,"s":"\\u00e9"}',
        b'{"i": 2}',
        b"[3, 4]",
        b'{"key":"c","value_json":"{not json"}',
        None,
        b"\x00\x01",
        b"7",
        b"42",
    ]
