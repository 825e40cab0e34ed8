"""Whole-table reads that share the event loop.

The broker serves the ingress, the invoker and the log on one event loop; an admin request
that decodes every invocation in one go (10,000 take most of a second, seconds on a busy
machine) holds all of them up. Reading through ``paced`` lets them run every few hundred rows,
and ``JsonRows`` encodes the answer as the rows come, a batch at a time: the JSON of 40,000
rows (20 MB) takes a third of a second in one ``json.dumps``, and joining it or freeing the
decoded rows at the end would each hold the loop tens of milliseconds more.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterable
from typing import Any, TypeVar

from sluice.broker.httpserver import Response

T = TypeVar("T")

EVERY = 64  # rows between yields: a millisecond or two of decoding or encoding


async def paced(rows: Iterable[T]) -> AsyncIterator[T]:
    """The rows, with a turn of the event loop after every ``EVERY`` of them."""
    for n, row in enumerate(rows):
        if n % EVERY == EVERY - 1:
            await asyncio.sleep(0)
        yield row


class JsonRows:
    """The body ``{key: [row, ...]}``, byte for byte what ``json.dumps`` makes of it, encoded
    ``EVERY`` rows at a time as they are added and kept as pieces, never joined."""

    def __init__(self, key: str) -> None:
        self._parts = [b"{%s: [" % json.dumps(key).encode()]
        self._batch: list[Any] = []
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def add(self, row: Any) -> None:
        self._batch.append(row)
        self._count += 1
        if len(self._batch) == EVERY:
            self._flush()

    def _flush(self) -> None:
        if self._batch:
            text = json.dumps(self._batch)[1:-1].encode()  # "a, b" of "[a, b]"
            self._parts.append(text if len(self._parts) == 1 else b", " + text)
            self._batch = []

    def response(self) -> Response:
        """A 200 with the rows added so far."""
        self._flush()
        return Response(200, parts=[*self._parts, b"]}"], content_type="application/json")
