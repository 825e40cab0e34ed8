"""Snapshots of the tables, for a broker on the Kafka log (``--snapshots DIR|s3://BUCKET/PREFIX``).

A snapshot is a RocksDB checkpoint with a manifest: the log it belongs to, the format, and
the LSN its tables have applied (read from the checkpoint itself, so that it is exact however
far the live tables have moved on meanwhile). It lives in a repository, a directory or an
S3-compatible bucket, under one name per snapshot:

    snap-00000000000000012345/  db/...  manifest.json      (written last: a snapshot is
                                                             complete once it has one)

A broker that starts without usable tables (its disk was lost, or they are corrupt, or they
are older than the log's start) restores the newest snapshot of its log and replays the log
from the snapshot's LSN on. Snapshots of another log or of another format are passed over
with a warning; with none usable, the whole log is replayed. The newest ``keep`` snapshots
stay; the log may be trimmed below the oldest of them (``oldest``).
"""

from __future__ import annotations

import abc
import json
import logging
import os
import shutil
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from rocksdict import Checkpoint

from sluice.broker.files import write_durably
from sluice.broker.partition.processor import APPLIED
from sluice.broker.storage import RocksDBStore

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import ObjectIdentifierTypeDef

FORMAT = 1
MANIFEST = "manifest.json"
log = logging.getLogger("sluice.snapshots")


@dataclass(frozen=True, slots=True)
class Snapshot:
    name: str  # snap-<applied LSN, 20 digits>
    applied: int
    where: str  # for messages: the directory or the s3:// URL


class Repository(abc.ABC):
    """Where snapshots are kept: named folders of files."""

    @abc.abstractmethod
    def names(self) -> list[str]:
        """The snapshots' names (complete or not), in no order."""

    @abc.abstractmethod
    def manifest(self, name: str) -> bytes | None:
        """The manifest of ``name``; None when it has none (it was not finished)."""

    @abc.abstractmethod
    def put(self, staged: Path, name: str) -> None:
        """Store the folder ``staged`` (``db/`` and the manifest) as ``name``; the folder is
        the repository's afterwards (moved, or removed once uploaded)."""

    @abc.abstractmethod
    def fetch(self, name: str, dest: Path) -> None:
        """Copy the tables of ``name`` to the new folder ``dest``."""

    @abc.abstractmethod
    def delete(self, name: str) -> None: ...

    @abc.abstractmethod
    def describe(self, name: str) -> str: ...


class DirectoryRepository(Repository):
    def __init__(self, directory: Path) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)

    def staging(self) -> Path:
        """Checkpoints are made inside the repository: hard links where it is on the tables'
        disk, and a rename (not a copy) to finish."""
        return self.dir

    def names(self) -> list[str]:
        return [p.name for p in self.dir.glob("snap-*")]

    def manifest(self, name: str) -> bytes | None:
        try:
            return (self.dir / name / MANIFEST).read_bytes()
        except OSError:
            return None

    def put(self, staged: Path, name: str) -> None:
        staged.rename(self.dir / name)

    def fetch(self, name: str, dest: Path) -> None:
        shutil.copytree(self.dir / name / "db", dest)

    def delete(self, name: str) -> None:
        shutil.rmtree(self.dir / name, ignore_errors=True)

    def describe(self, name: str) -> str:
        return str(self.dir / name)


class S3Repository(Repository):
    """``s3://BUCKET/PREFIX`` through boto3: credentials and region from the usual AWS
    environment variables and files; ``endpoint`` for S3-compatible stores (MinIO, moto).
    boto3 retries a failed call itself (its standard mode); what still fails raises."""

    def __init__(self, url: str, endpoint: str | None = None) -> None:
        import boto3
        from botocore.config import Config

        parts = urlsplit(url)
        if parts.scheme != "s3" or not parts.netloc:
            raise ValueError(f"{url!r}: expected s3://BUCKET[/PREFIX]")
        self.bucket = parts.netloc
        self.prefix = parts.path.strip("/") + "/" if parts.path.strip("/") else ""
        config = Config(retries={"mode": "standard", "max_attempts": 5})
        self._s3: S3Client = boto3.client("s3", endpoint_url=endpoint, config=config)

    def _keys(self, prefix: str) -> Iterator[str]:
        pages = self._s3.get_paginator("list_objects_v2")
        for page in pages.paginate(Bucket=self.bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                yield obj["Key"]

    def names(self) -> list[str]:
        pages = self._s3.get_paginator("list_objects_v2")
        found = []
        for page in pages.paginate(Bucket=self.bucket, Prefix=self.prefix + "snap-", Delimiter="/"):
            for common in page.get("CommonPrefixes", []):
                found.append(common["Prefix"][len(self.prefix) :].rstrip("/"))
        return found

    def manifest(self, name: str) -> bytes | None:
        try:
            body = self._s3.get_object(Bucket=self.bucket, Key=f"{self.prefix}{name}/{MANIFEST}")
        except self._s3.exceptions.NoSuchKey:
            return None
        data: bytes = body["Body"].read()
        return data

    def put(self, staged: Path, name: str) -> None:
        try:
            files = sorted(p for p in (staged / "db").rglob("*") if p.is_file())
            for path in files:  # the tables first, the manifest last: then it is complete
                key = f"{self.prefix}{name}/{path.relative_to(staged).as_posix()}"
                self._s3.upload_file(str(path), self.bucket, key)
            self._s3.upload_file(
                str(staged / MANIFEST), self.bucket, f"{self.prefix}{name}/{MANIFEST}"
            )
        finally:
            shutil.rmtree(staged, ignore_errors=True)

    def fetch(self, name: str, dest: Path) -> None:
        root = f"{self.prefix}{name}/db/"
        dest.mkdir(parents=True)
        for key in self._keys(root):
            target = dest / key[len(root) :]
            target.parent.mkdir(parents=True, exist_ok=True)
            self._s3.download_file(self.bucket, key, str(target))

    def delete(self, name: str) -> None:
        keys = list(self._keys(f"{self.prefix}{name}/"))
        # The manifest first, so that a delete cut short leaves an unfinished snapshot (passed
        # over), never a complete-looking one with tables missing.
        keys.sort(key=lambda k: not k.endswith("/" + MANIFEST))
        for i in range(0, len(keys), 1000):
            chunk: list[ObjectIdentifierTypeDef] = [{"Key": k} for k in keys[i : i + 1000]]
            self._s3.delete_objects(Bucket=self.bucket, Delete={"Objects": chunk})

    def describe(self, name: str) -> str:
        return f"s3://{self.bucket}/{self.prefix}{name}"


def repository(where: str, endpoint: str | None = None) -> Repository:
    """A directory path or ``s3://BUCKET/PREFIX``."""
    if where.startswith("s3://"):
        return S3Repository(where, endpoint)
    if endpoint is not None:
        raise ValueError("--snapshot-endpoint is for snapshots in S3 (--snapshots s3://...)")
    return DirectoryRepository(Path(where))


class Snapshots:
    def __init__(
        self,
        repo: Repository | Path | str,
        log_url: str,
        *,
        keep: int = 3,
        staging: Path | None = None,
    ) -> None:
        self.repo = repo if isinstance(repo, Repository) else repository(str(repo))
        self.log_url = log_url
        self.keep = keep
        # Where checkpoints are made before they go to the repository: next to the tables.
        if isinstance(self.repo, DirectoryRepository):
            self._staging = self.repo.staging()
        else:
            self._staging = staging if staging is not None else Path(".sluice-snapshots")

    def take(self, store: RocksDBStore) -> Snapshot:
        """Checkpoint ``store`` and store it (blocking: run it off the event loop), then drop
        the oldest beyond ``keep``."""
        self._staging.mkdir(parents=True, exist_ok=True)
        tmp = self._staging / f".taking-{os.getpid()}-{time.monotonic_ns()}"
        tmp.mkdir()
        try:
            Checkpoint(store.db).create_checkpoint(str(tmp / "db"))
            copy = RocksDBStore(tmp / "db")
            try:
                raw = copy.get("meta", APPLIED)
            finally:
                copy.close()
            applied = struct.unpack(">Q", raw)[0] if raw else 0
            manifest = {"format": FORMAT, "log": self.log_url, "applied": applied}
            write_durably(tmp / MANIFEST, json.dumps(manifest).encode())
            name = f"snap-{applied:020d}"
            if self.repo.manifest(name) is None:  # (else nothing was applied since the last)
                self.repo.put(tmp, name)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        for old in self._all()[self.keep :]:
            self.repo.delete(old.name)
        return Snapshot(name, applied, self.repo.describe(name))

    def restore(self, db: Path) -> Snapshot | None:
        """Copy the newest usable snapshot's tables to ``db`` (which must not exist)."""
        return self.restore_from(db, 0)

    def restore_from(self, db: Path, at_least: int) -> Snapshot | None:
        """Copy the newest usable snapshot with at least ``at_least`` applied to ``db``."""
        for snap in self._all():
            if snap.applied < at_least:
                break
            tmp = db.with_name(db.name + ".restoring")
            shutil.rmtree(tmp, ignore_errors=True)
            self.repo.fetch(snap.name, tmp)
            tmp.rename(db)
            log.warning(
                "restored the tables from the snapshot %s (LSN %d); the log is replayed "
                "from there", snap.where, snap.applied,
            )  # fmt: skip
            return snap
        return None

    def _all(self) -> list[Snapshot]:
        """This log's usable snapshots, newest first."""
        out = []
        for name in sorted(self.repo.names(), reverse=True):
            where = self.repo.describe(name)
            raw = self.repo.manifest(name)
            try:
                manifest = json.loads(raw) if raw is not None else None
            except ValueError:
                manifest = None
            if not isinstance(manifest, dict):
                log.warning("passing over the snapshot %s: no readable manifest", where)
            elif manifest.get("format") != FORMAT:
                log.warning("passing over the snapshot %s: format %s, not %d",
                            where, manifest.get("format"), FORMAT)  # fmt: skip
            elif manifest.get("log") != self.log_url:
                log.warning("passing over the snapshot %s: it is of the log %s",
                            where, manifest.get("log"))  # fmt: skip
            else:
                out.append(Snapshot(name, int(manifest["applied"]), where))
        return out

    def latest(self) -> Snapshot | None:
        found = self._all()
        return found[0] if found else None

    def oldest(self) -> Snapshot | None:
        """The oldest snapshot kept: the log below its LSN is needed by no restore."""
        found = self._all()[: self.keep]
        return found[-1] if found else None
