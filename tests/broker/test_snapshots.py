"""Snapshots of the tables (broker/snapshots.py): stamped with the LSN their tables applied,
restored newest first, those of another log or format passed over, the oldest dropped; in a
directory and in S3."""

from __future__ import annotations

import json
import struct
import uuid
from pathlib import Path

import pytest

from sluice.broker.snapshots import S3Repository, Snapshots, repository
from sluice.broker.storage import RocksDBStore, Transaction
from tests.s3 import S3Server

LOG = "kafka://127.0.0.1:9092/sluice-log"


def _apply(store: RocksDBStore, lsn: int, value: bytes) -> None:
    tx = Transaction(store)
    tx.put("state", b"k", value)
    tx.put("meta", b"applied_lsn", struct.pack(">Q", lsn))
    tx.commit()


def test_a_snapshot_restores_the_tables_at_its_lsn(tmp_path: Path) -> None:
    store = RocksDBStore(tmp_path / "db")
    snaps = Snapshots(tmp_path / "snaps", LOG, keep=2)
    for lsn in (10, 20, 30):
        _apply(store, lsn, f"v{lsn}".encode())
        assert snaps.take(store).applied == lsn
    _apply(store, 40, b"v40")  # not in any snapshot
    store.close()
    assert sorted(p.name for p in (tmp_path / "snaps").iterdir()) == [
        "snap-00000000000000000020",
        "snap-00000000000000000030",
    ], "the oldest snapshot stays past keep=2"

    restored = snaps.restore(tmp_path / "new-db")
    assert restored is not None and restored.applied == 30
    copy = RocksDBStore(tmp_path / "new-db")
    assert copy.get("state", b"k") == b"v30"
    assert copy.get("meta", b"applied_lsn") == struct.pack(">Q", 30)
    copy.close()


def test_snapshots_of_another_log_or_format_are_passed_over(tmp_path: Path) -> None:
    store = RocksDBStore(tmp_path / "db")
    _apply(store, 5, b"old")
    Snapshots(tmp_path / "snaps", LOG).take(store)
    _apply(store, 9, b"other log")
    Snapshots(tmp_path / "snaps", "kafka://127.0.0.1:9092/another").take(store)
    _apply(store, 12, b"newer format")
    newer = Snapshots(tmp_path / "snaps", LOG).take(store)
    store.close()
    path = tmp_path / "snaps" / newer.name / "manifest.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "format": 2}))

    restored = Snapshots(tmp_path / "snaps", LOG).restore(tmp_path / "new-db")
    assert restored is not None and restored.applied == 5
    assert Snapshots(tmp_path / "snaps", "kafka://elsewhere:9092/t").latest() is None


def test_snapshots_in_s3_restore_newest_first_and_pass_over_unfinished_ones(
    tmp_path: Path, s3: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same in a bucket on a local S3 (moto_server): the tables go up before the manifest,
    so a snapshot cut short (no manifest) is passed over; the oldest beyond ``keep`` go, and
    ``oldest`` names the one the log may be trimmed below."""
    for name, value in s3.env().items():
        monkeypatch.setenv(name, value)
    bucket = f"snaps-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(bucket)
    url = f"s3://{bucket}/cluster-a/p0"
    snaps = Snapshots(repository(url, s3.endpoint), LOG, keep=2, staging=tmp_path / "staging")
    store = RocksDBStore(tmp_path / "db")
    for lsn in (10, 20, 30):
        _apply(store, lsn, f"v{lsn}".encode())
        taken = snaps.take(store)
        assert (taken.applied, taken.where) == (lsn, f"{url}/snap-{lsn:020d}")
    store.close()
    names = {k.split("/")[2] for k in s3.keys(bucket, "cluster-a/p0/")}
    assert names == {"snap-00000000000000000020", "snap-00000000000000000030"}
    assert list((tmp_path / "staging").iterdir()) == [], "the staged checkpoints are gone"
    oldest = snaps.oldest()
    assert oldest is not None and oldest.applied == 20

    # A newer snapshot whose manifest never arrived: its tables alone do not make it one.
    repo = repository(url, s3.endpoint)
    assert isinstance(repo, S3Repository)
    unfinished = "cluster-a/p0/snap-00000000000000000099/db/CURRENT"
    repo._s3.put_object(Bucket=bucket, Key=unfinished, Body=b"x")

    restored = snaps.restore(tmp_path / "new-db")
    assert restored is not None and restored.applied == 30
    copy = RocksDBStore(tmp_path / "new-db")
    assert copy.get("state", b"k") == b"v30"
    copy.close()
    assert snaps.restore_from(tmp_path / "newer-db", 31) is None, "none reaches LSN 31"
    assert not (tmp_path / "newer-db").exists()


def test_a_snapshot_endpoint_needs_s3_snapshots(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="snapshots in S3"):
        repository(str(tmp_path / "snaps"), "http://127.0.0.1:9000")
