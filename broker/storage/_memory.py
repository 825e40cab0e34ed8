from __future__ import annotations

import bisect
from collections.abc import Iterator

from ._base import COLUMN_FAMILIES, Store


class MemoryStore(Store):
    """Tables in dicts with sorted key lists: for tests, and for a broker without a disk."""

    def __init__(self) -> None:
        self._data: dict[str, dict[bytes, bytes]] = {cf: {} for cf in COLUMN_FAMILIES}
        self._keys: dict[str, list[bytes]] = {cf: [] for cf in COLUMN_FAMILIES}

    def get(self, cf: str, key: bytes) -> bytes | None:
        return self._data[cf].get(key)

    def scan(self, cf: str, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        keys = self._keys[cf]
        data = self._data[cf]
        i = bisect.bisect_left(keys, prefix)
        out = []
        while i < len(keys) and keys[i].startswith(prefix):
            out.append((keys[i], data[keys[i]]))
            i += 1
        return iter(out)

    def write(self, changes: dict[tuple[str, bytes], bytes | None]) -> None:
        for (cf, key), value in changes.items():
            data = self._data[cf]
            keys = self._keys[cf]
            if value is None:
                if key in data:
                    del data[key]
                    keys.pop(bisect.bisect_left(keys, key))
            else:
                if key not in data:
                    bisect.insort(keys, key)
                data[key] = value

    def close(self) -> None:
        pass
