"""A local S3-protocol server for tests: ``moto_server`` from moto[server] (DESIGN.md).

It keeps its buckets in memory, so it outlives whatever it stores for (a broker's snapshots,
Tansu's ``s3://`` storage) only as long as the process runs: tests restart those, never it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx

from tests.broker.conftest import free_port, stop_process, wait_port

MOTO_SERVER = Path(sys.executable).parent / "moto_server"


class S3Server:
    def __init__(self) -> None:
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        """The environment of a client of this server: dummy credentials, one region, and
        the endpoint under the names boto3 (AWS_ENDPOINT_URL) and Tansu (AWS_ENDPOINT) read."""
        return {
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ENDPOINT": self.endpoint,
            "AWS_ALLOW_HTTP": "true",
        }

    def start(self) -> None:
        argv = [str(MOTO_SERVER), "-H", "127.0.0.1", "-p", str(self.port)]
        self.proc = subprocess.Popen(
            argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ}
        )
        wait_port(self.port, self.proc, timeout=30)

    def stop(self) -> None:
        stop_process(self.proc)

    def create_bucket(self, name: str) -> None:
        r = httpx.put(f"{self.endpoint}/{name}", timeout=10)
        assert r.status_code == 200, f"creating the bucket {name}: {r.status_code} {r.text}"

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        """The keys under ``prefix`` in ``bucket`` (ListObjectsV2, one page is enough here)."""
        import boto3

        s3 = boto3.client("s3", endpoint_url=self.endpoint, **_credentials())
        found = s3.list_objects_v2(Bucket=bucket, Prefix=prefix)
        return [o["Key"] for o in found.get("Contents", [])]


def _credentials() -> dict[str, str]:
    return {
        "aws_access_key_id": "test",
        "aws_secret_access_key": "test",
        "region_name": "us-east-1",
    }


def s3_session() -> Iterator[S3Server]:
    server = S3Server()
    server.start()
    try:
        yield server
    finally:
        server.stop()
