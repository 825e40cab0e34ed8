"""Durable timers: the table holds them; this service fires them by appending to the log."""

from __future__ import annotations

import asyncio
import heapq
import time
from collections.abc import Callable

from sluice.broker.partition._records import TimerFired


class TimerService:
    def __init__(self, submit: Callable[[TimerFired], None]) -> None:
        self._submit = submit
        self._heap: list[tuple[int, bytes]] = []
        self._keys: set[bytes] = set()
        self._handle: asyncio.TimerHandle | None = None
        self._next_at: int | None = None

    def register(self, fire_at: int, key: bytes) -> None:
        if key in self._keys:
            return
        self._keys.add(key)
        heapq.heappush(self._heap, (fire_at, key))
        if self._next_at is None or fire_at < self._next_at:
            self._arm()

    def _arm(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._next_at = None
        if not self._heap:
            return
        fire_at = self._heap[0][0]
        self._next_at = fire_at
        delay = max(0.0, fire_at / 1000 - time.time())
        self._handle = asyncio.get_running_loop().call_later(delay, self._fire)

    def _fire(self) -> None:
        self._handle = None
        now = int(time.time() * 1000)
        while self._heap and self._heap[0][0] <= now:
            _, key = heapq.heappop(self._heap)
            self._keys.discard(key)
            self._submit(TimerFired(key=key))
        self._arm()

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
