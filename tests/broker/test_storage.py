"""One suite, every Store implementation (RocksDB and in-memory)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from sluice.broker.storage import MemoryStore, RocksDBStore, Store, Transaction


@pytest.fixture(params=["memory", "rocksdb"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    s: Store = MemoryStore() if request.param == "memory" else RocksDBStore(tmp_path / "db")
    yield s
    s.close()


def test_put_get_delete_atomic_batch(store: Store) -> None:
    store.write({("state", b"a"): b"1", ("status", b"x"): b"2"})
    assert store.get("state", b"a") == b"1"
    assert store.get("status", b"x") == b"2"
    store.write({("state", b"a"): None})
    assert store.get("state", b"a") is None


def test_scan_prefix_in_order(store: Store) -> None:
    store.write({("state", k): k for k in (b"p/2", b"p/1", b"q/1", b"p/3", b"o/9")})
    assert [k for k, _ in store.scan("state", b"p/")] == [b"p/1", b"p/2", b"p/3"]
    assert list(store.scan("state", b"zz")) == []


def test_transaction_reads_its_own_writes(store: Store) -> None:
    store.write({("state", b"p/1"): b"old", ("state", b"p/2"): b"keep"})
    tx = Transaction(store)
    tx.put("state", b"p/1", b"new")
    tx.delete("state", b"p/2")
    tx.put("state", b"p/0", b"added")
    assert tx.get("state", b"p/1") == b"new"
    assert tx.get("state", b"p/2") is None
    assert tx.scan("state", b"p/") == [(b"p/0", b"added"), (b"p/1", b"new")]
    assert store.get("state", b"p/1") == b"old"  # nothing visible before commit
    tx.commit()
    assert store.get("state", b"p/1") == b"new"
    assert store.get("state", b"p/2") is None


def test_rocksdb_survives_reopen(tmp_path: Path) -> None:
    s = RocksDBStore(tmp_path / "db")
    s.write({("meta", b"applied_lsn"): b"\x00" * 7 + b"\x05", ("journal", b"j"): b"v"})
    s.close()
    s = RocksDBStore(tmp_path / "db")
    assert s.get("meta", b"applied_lsn") == b"\x00" * 7 + b"\x05"
    assert s.get("journal", b"j") == b"v"
    s.close()
