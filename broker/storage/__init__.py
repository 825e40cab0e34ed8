"""Partition tables: a key-value store interface, a RocksDB and an in-memory implementation,
and the typed tables the state machine reads and writes through one transaction."""

from ._base import COLUMN_FAMILIES, Store, Transaction
from ._memory import MemoryStore
from ._rocksdb import RocksDBStore

__all__ = ["COLUMN_FAMILIES", "MemoryStore", "RocksDBStore", "Store", "Transaction"]
