from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rocksdict import Options, Rdict, WriteBatch, WriteOptions

from sluice.broker import faults
from sluice.broker.errors import StorageError

from ._base import COLUMN_FAMILIES, Store


class RocksDBStore(Store):
    """Tables as RocksDB column families.

    Each batch carries the applied log position. RocksDB's WAL stays on but is not synced:
    it keeps a batch atomic across column families (a crash never leaves one table ahead of
    the applied position), and whatever it lost is replayed from the log on start.

    Every RocksDB error is a ``StorageError`` (fatal): a failed read or write is the disk's
    fault, not the command's, so the processor must not skip the command for it.
    """

    def __init__(self, path: Path) -> None:
        opts = Options(raw_mode=True)
        opts.create_if_missing(True)
        opts.create_missing_column_families(True)
        cfs = {cf: Options(raw_mode=True) for cf in COLUMN_FAMILIES}
        self._db: Any = Rdict(str(path), opts, column_families=cfs)
        self._cf: dict[str, Any] = {cf: self._db.get_column_family(cf) for cf in COLUMN_FAMILIES}
        self._handles = {cf: self._db.get_column_family_handle(cf) for cf in COLUMN_FAMILIES}
        self._wopts = WriteOptions()

    @property
    def db(self) -> Any:
        """The rocksdict database (for checkpoints: broker/snapshots.py)."""
        return self._db

    def get(self, cf: str, key: bytes) -> bytes | None:
        try:
            value: bytes | None = self._cf[cf].get(key)
        except Exception as e:
            raise StorageError(f"reading table {cf!r} failed", e) from e
        return value

    def scan(self, cf: str, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        try:
            it = self._cf[cf].iter()
            it.seek(prefix)
            while it.valid():
                key = it.key()
                if not key.startswith(prefix):
                    break
                yield key, it.value()
                it.next()
            it.status()  # an iterator that stopped on an I/O error is not "the end"
        except Exception as e:
            raise StorageError(f"scanning table {cf!r} failed", e) from e

    def write(self, changes: dict[tuple[str, bytes], bytes | None]) -> None:
        wb = WriteBatch(raw_mode=True)
        handles = self._handles
        for (cf, key), value in changes.items():
            if value is None:
                wb.delete(key, handles[cf])
            else:
                wb.put(key, value, handles[cf])
        try:
            faults.check("storage-write")
            self._db.write(wb, self._wopts)
        except Exception as e:
            raise StorageError("writing the tables failed", e) from e

    def sync(self) -> None:
        try:
            self._db.flush_wal(True)
        except Exception as e:
            raise StorageError("syncing the tables failed", e) from e

    def close(self) -> None:
        if self._db is None:
            return
        self._db.flush()
        for cf in self._cf.values():
            cf.close()
        self._cf.clear()
        self._handles.clear()
        self._db.close()
        self._db = None  # the LOCK is released when the last handle is gone
        gc.collect()
