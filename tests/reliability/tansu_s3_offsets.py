"""What Tansu 0.6.0 on s3:// keeps across a SIGKILL, at the plain confluent-kafka level.

    python -m tests.reliability.tansu_s3_offsets [RECORDS] [--each]
    python -m tests.reliability.tansu_s3_offsets --tail [FETCH_WAIT_MS]
    python -m tests.reliability.tansu_s3_offsets --under-load

Produces RECORDS records (one batch, or ``--each``: one batch per record) with an idempotent
acks=all producer and waits for every delivery report; SIGKILLs Tansu, starts it again on
the same port and bucket, and reads the partition from offset 0 to the end that Fetch
reports. It prints the high watermark three ways: ListOffsets (``get_watermark_offsets``)
before the kill and after the restart, the ``high`` of the partition's watermark.json in the
bucket, and the one that Fetch responses carry; and what the read found against what was
acknowledged (lost, duplicated, at another offset).

Seen (2026-12-04), with no record in flight at the kill: every acknowledged record is there
after the restart, at its offset, and Fetch reports the right high watermark; ListOffsets
"latest" does not, before the kill as after it: it is one past the base offset of the batch
object with the newest S3 modification time, ties (same second) going to the lowest offset,
so it lags (200 records in one batch: 1; 200 batches of one: 117, 145, 177 or 195). A
reader that stops at ListOffsets' high watermark misses the rest, which looks like records
lost in the kill: they are not.

``--tail``: no kill; an idempotent producer writes small batches for 20 s while a consumer
with ``fetch.wait.max.ms`` = FETCH_WAIT_MS (default 10, the Kafka log's) tails the partition.
Seen: with 10, 20 or 50 ms the consumer stops getting records after a few hundred, for good
(12 to 16 s with no record below the high watermark that Fetch reports; a fresh consumer at
the same offset with the default 500 ms gets them at once); with 100 ms (on an idle machine)
or 500 ms it keeps up. Tansu answers such a fetch with no records (its debug log shows the
fetches, none answered with data): its read of the partition (a listing of every batch
object, a GET of each) takes longer than the wait.

``--under-load``: the producer writes on while Tansu is SIGKILLed and, a second later,
started again. Seen in 13 runs: 6 lost 6 to 17 acknowledged records, always the ones in
flight at the kill (values right after the last one acknowledged before it), reported
delivered after the restart with no offset or a small bogus one (0, 1, 2, ...); the offsets
Tansu had reserved for them stay a hole. Its produce path on S3 advances the producer's
sequence in meta.json, then the partition's watermark.json, then writes the batch object: a
kill before the last step leaves the sequence taken, and the retry is answered as a
duplicate, which librdkafka counts as delivered.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
import uuid
from collections.abc import Iterator

import boto3
import confluent_kafka as ck

from tests.kafka import TansuS3
from tests.s3 import S3Server


@contextlib.contextmanager
def _tansu_on_s3() -> Iterator[tuple[S3Server, TansuS3, str]]:
    """A local S3, a Tansu on its bucket ``repro``, and a new topic of one partition there;
    both stopped on the way out."""
    s3 = S3Server()
    s3.start()
    tansu = TansuS3(s3, "repro")
    try:
        tansu.start()
        topic = f"t{uuid.uuid4().hex[:6]}"
        tansu.create_topic(topic, 1)
        yield s3, tansu, topic
    finally:
        tansu.stop()
        s3.stop()


def main(n: int, each: bool) -> dict[str, object]:
    out: dict[str, object] = {"records": n, "batches": n if each else "one"}
    with _tansu_on_s3() as (s3, tansu, topic):
        tp = ck.TopicPartition(topic, 0)
        p = ck.Producer(
            {"bootstrap.servers": tansu.bootstrap, "enable.idempotence": True, "acks": "all"}
        )
        acked: dict[bytes, int] = {}

        def report(err: ck.KafkaError | None, m: ck.Message) -> None:
            assert err is None, err
            acked[m.value() or b""] = m.offset() or 0

        for i in range(n):
            p.produce(topic, b"%d" % i, on_delivery=report)
            if each:
                p.flush(10)
        assert p.flush(60) == 0
        out["acknowledged"] = len(acked)
        out["list_offsets_before_kill"] = _list_offsets(tansu, tp)
        mark = f"clusters/tansu_cluster/topics/{topic}/partitions/0000000000/watermark.json"
        s3c = boto3.client("s3", endpoint_url=s3.endpoint, **_keys())
        out["watermark_json"] = s3c.get_object(Bucket="repro", Key=mark)["Body"].read().decode()
        tansu.kill()
        tansu.start()
        out["list_offsets_after_restart"] = _list_offsets(tansu, tp)
        got, out["fetch_high_watermark"] = _read_all(tansu, topic)
        out["read"] = sum(len(v) for v in got.values())
        out["lost"] = sum(1 for v in acked if v not in got)
        out["duplicated"] = sum(len(o) - 1 for o in got.values())
        out["at_another_offset"] = sum(1 for v, o in acked.items() if v in got and got[v] != [o])
        return out


def tail(wait_ms: int, seconds: float = 20.0) -> dict[str, object]:
    stop = threading.Event()
    acked: list[int] = []
    with _tansu_on_s3() as (_, tansu, topic), contextlib.ExitStack() as finish:
        finish.callback(stop.set)
        tp = ck.TopicPartition(topic, 0)
        p = ck.Producer(
            {"bootstrap.servers": tansu.bootstrap, "enable.idempotence": True, "acks": "all",
             "linger.ms": 1}
        )  # fmt: skip

        def report(err: ck.KafkaError | None, m: ck.Message) -> None:
            assert err is None, err
            acked.append(m.offset() or 0)

        def write() -> None:
            while not stop.is_set():
                for _ in range(3):
                    p.produce(topic, b"x", on_delivery=report)
                p.poll(0.005)
            p.flush(30)

        writer = threading.Thread(target=write)
        writer.start()
        c = ck.Consumer(
            {"bootstrap.servers": tansu.bootstrap, "group.id": "repro-tail",
             "enable.partition.eof": True, "fetch.wait.max.ms": wait_ms,
             "auto.offset.reset": "error"}
        )  # fmt: skip
        c.assign([ck.TopicPartition(topic, 0, 0)])
        position, moved, longest = 0, time.monotonic(), 0.0
        start = time.monotonic()
        while time.monotonic() - start < seconds:
            m = c.poll(0.1)
            if m is not None and m.error() is None:
                position, moved = (m.offset() or 0) + 1, time.monotonic()
            high = c.get_watermark_offsets(tp, cached=True)[1]
            if high <= position:
                moved = time.monotonic()
            longest = max(longest, time.monotonic() - moved)
        stop.set()
        writer.join()
        c.close()
        return {
            "fetch_wait_ms": wait_ms,
            "acknowledged": len(acked),
            "read_to": position,
            "longest_s_without_a_record_below_the_high_watermark": round(longest, 1),
        }


def under_load(seconds: float = 3.0) -> dict[str, object]:
    """An idempotent acks=all producer writes for ``seconds``; Tansu is SIGKILLed, started
    again a second later, and the producer writes on for ``seconds`` more; then every
    acknowledged value is looked for in the partition, read from 0 to its end."""
    stop = threading.Event()
    acked: dict[bytes, int] = {}
    failed: list[str] = []
    with _tansu_on_s3() as (_, tansu, topic), contextlib.ExitStack() as finish:
        finish.callback(stop.set)
        p = ck.Producer(
            {"bootstrap.servers": tansu.bootstrap, "enable.idempotence": True, "acks": "all",
             "linger.ms": 1}
        )  # fmt: skip

        def report(err: ck.KafkaError | None, m: ck.Message) -> None:
            if err is None:
                acked[m.value() or b""] = m.offset() or 0
            else:
                failed.append(err.str())

        def write() -> None:
            i = 0
            while not stop.is_set():
                p.produce(topic, b"%d" % i, on_delivery=report)
                i += 1
                p.poll(0.002)
            p.flush(60)

        writer = threading.Thread(target=write)
        writer.start()
        time.sleep(seconds)
        before = len(acked)
        tansu.kill()
        time.sleep(1.0)
        tansu.start()
        time.sleep(seconds)
        stop.set()
        writer.join()
        got, high = _read_all(tansu, topic)
        lost = sorted((o, v) for v, o in acked.items() if v not in got)
        return {
            "acknowledged_before_kill": before,
            "acknowledged": len(acked),
            "delivery_errors": len(failed),
            "fetch_high_watermark": high,
            "read": sum(len(v) for v in got.values()),
            "lost": len(lost),
            "lost_offsets": [o for o, _ in lost][:20],
            "lost_values": [int(v) for _, v in lost][:20],
            "duplicated": sum(len(o) - 1 for o in got.values()),
            "at_another_offset": sum(1 for v, o in acked.items() if v in got and got[v] != [o]),
        }


def _read_all(tansu: TansuS3, topic: str) -> tuple[dict[bytes, list[int]], int]:
    """Partition 0 from offset 0 to the end that Fetch reports: the offsets of each value,
    and that high watermark."""
    c = ck.Consumer(
        {"bootstrap.servers": tansu.bootstrap, "group.id": "repro-read",
         "enable.partition.eof": True, "enable.auto.commit": False}
    )  # fmt: skip
    try:
        c.assign([ck.TopicPartition(topic, 0, 0)])
        got: dict[bytes, list[int]] = {}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is None:
                continue
            err = m.error()
            if err is not None and err.code() == ck.KafkaError._PARTITION_EOF:
                break
            assert err is None, err
            got.setdefault(m.value() or b"", []).append(m.offset() or 0)
        return got, c.get_watermark_offsets(ck.TopicPartition(topic, 0), cached=True)[1]
    finally:
        c.close()


def _list_offsets(tansu: TansuS3, tp: ck.TopicPartition) -> tuple[int, int]:
    c = ck.Consumer({"bootstrap.servers": tansu.bootstrap, "group.id": "repro-probe"})
    try:
        lo, hi = c.get_watermark_offsets(tp, timeout=15)
        return int(lo), int(hi)
    finally:
        c.close()


def _keys() -> dict[str, str]:
    return {"aws_access_key_id": "t", "aws_secret_access_key": "t", "region_name": "us-east-1"}


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    if "--under-load" in sys.argv:
        found = under_load()
    elif "--tail" in sys.argv:
        found = tail(int(args[0]) if args else 10)
    else:
        found = main(int(args[0]) if args else 200, "--each" in sys.argv)
    for k, v in found.items():
        print(f"{k}: {v}")
