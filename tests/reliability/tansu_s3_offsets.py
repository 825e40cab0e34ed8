"""What Tansu 0.6.0 on s3:// keeps across a SIGKILL, at the plain confluent-kafka level.

    python -m tests.reliability.tansu_s3_offsets [RECORDS] [--each]

Produces RECORDS records (one batch, or ``--each``: one batch per record) with an idempotent
acks=all producer and waits for every delivery report; SIGKILLs Tansu, starts it again on
the same port and bucket, and reads the partition from offset 0 to the end that Fetch
reports. It prints the high watermark three ways: ListOffsets (``get_watermark_offsets``)
before the kill and after the restart, the ``high`` of the partition's watermark.json in the
bucket, and the one that Fetch responses carry; and what the read found against what was
acknowledged (lost, duplicated, at another offset).

Seen (2026-12-04): every acknowledged record is there after the restart, at its offset, and
Fetch reports the right high watermark; ListOffsets "latest" does not, before the kill as
after it: it is one past the base offset of the batch object with the newest S3 modification
time, ties (same second) going to the lowest offset, so it lags (200 records in one batch: 1;
200 batches of one: 117 or 177). A reader that stops at ListOffsets' high watermark misses
the rest, which looks like records lost in the kill: they are not.
"""

from __future__ import annotations

import sys
import time
import uuid

import boto3
import confluent_kafka as ck

from tests.kafka import TansuS3
from tests.s3 import S3Server


def main(n: int, each: bool) -> dict[str, object]:
    s3 = S3Server()
    s3.start()
    tansu = TansuS3(s3, "repro")
    tansu.start()
    topic = f"t{uuid.uuid4().hex[:6]}"
    out: dict[str, object] = {"records": n, "batches": n if each else "one"}
    try:
        tansu.create_topic(topic, 1)
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
        c = ck.Consumer(
            {"bootstrap.servers": tansu.bootstrap, "group.id": "repro",
             "enable.partition.eof": True, "enable.auto.commit": False}
        )  # fmt: skip
        c.assign([ck.TopicPartition(topic, 0, 0)])
        got: dict[bytes, list[int]] = {}
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is None:
                continue
            err = m.error()
            if err is not None and err.code() == ck.KafkaError._PARTITION_EOF:
                break
            assert err is None, err
            got.setdefault(m.value() or b"", []).append(m.offset() or 0)
        out["fetch_high_watermark"] = c.get_watermark_offsets(tp, cached=True)[1]
        c.close()
        out["read"] = sum(len(v) for v in got.values())
        out["lost"] = sum(1 for v in acked if v not in got)
        out["duplicated"] = sum(len(o) - 1 for o in got.values())
        out["at_another_offset"] = sum(1 for v, o in acked.items() if v in got and got[v] != [o])
        return out
    finally:
        tansu.stop()
        s3.stop()


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
    for k, v in main(int(args[0]) if args else 200, "--each" in sys.argv).items():
        print(f"{k}: {v}")
