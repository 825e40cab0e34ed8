"""Snapshots of the tables (broker/snapshots.py): stamped with the LSN their tables applied,
restored newest first, those of another log or format passed over, the oldest dropped."""

from __future__ import annotations

import json
import struct
from pathlib import Path

from sluice.broker.snapshots import Snapshots
from sluice.broker.storage import RocksDBStore, Transaction

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
    manifest = json.loads((newer.path / "manifest.json").read_text())
    (newer.path / "manifest.json").write_text(json.dumps({**manifest, "format": 2}))

    restored = Snapshots(tmp_path / "snaps", LOG).restore(tmp_path / "new-db")
    assert restored is not None and restored.applied == 5
    assert Snapshots(tmp_path / "snaps", "kafka://elsewhere:9092/t").latest() is None
