"""Whole-table reads that share the event loop.

The broker serves the ingress, the invoker and the log on one event loop; an admin request
that decodes every invocation in one go (10,000 take most of a second, seconds on a busy
machine) holds all of them up. Reading through ``paced`` lets them run every few hundred rows.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from typing import TypeVar

T = TypeVar("T")

EVERY = 256  # rows between yields: a few milliseconds of decoding


async def paced(rows: Iterable[T]) -> AsyncIterator[T]:
    """The rows, with a turn of the event loop after every ``EVERY`` of them."""
    for n, row in enumerate(rows):
        if n % EVERY == EVERY - 1:
            await asyncio.sleep(0)
        yield row
