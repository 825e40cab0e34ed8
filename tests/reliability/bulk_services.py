"""Handlers that fill the invocation table cheaply, for the admin-scan test (Sluice SDK).

One ``Bulk.spread`` invocation journals a thousand one-way sends of ``Bulk.later`` delayed by a
day: the broker turns each into a scheduled invocation (a row of the invocation table) from one
HTTP request, and no handler runs for them while the test lasts.
"""

from __future__ import annotations

from datetime import timedelta

import sluice
from sluice import Context, Service

bulk = Service("Bulk")


@bulk.handler()
async def later(ctx: Context, n: int) -> int:
    return n


@bulk.handler()
async def spread(ctx: Context, span: list[int]) -> int:
    """Schedules ``later(i)`` for each i in [span[0], span[1]) a day from now."""
    for i in range(span[0], span[1]):
        ctx.service_send(later, arg=i, delay=timedelta(days=1))
    return span[1] - span[0]


app = sluice.app(bulk)
