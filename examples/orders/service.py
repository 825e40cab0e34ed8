"""The demo's handler service: order enrichment and per-customer totals.

Run it alone with `python -m examples.orders.service` (port 9080), or let `make demo`
start it. It installs the SDK only: no RocksDB, no Kafka client.
"""

from __future__ import annotations

import os

from pydantic import BaseModel

import sluice


class Line(BaseModel):
    sku: str
    quantity: int
    unit_price: float


class Order(BaseModel):
    id: str
    customer: str
    lines: list[Line]


class EnrichedOrder(BaseModel):
    id: str
    customer: str
    items: int
    total: float
    tier: str


class CustomerTotals(BaseModel):
    customer: str
    orders: int
    spent: float
    last_order: str


enricher = sluice.Service("OrderEnricher", description="Stateless: prices an order and tiers it.")


@enricher.handler()
async def enrich(ctx: sluice.Context, order: Order) -> EnrichedOrder:
    """Total and tier of one order (a pure function of the record)."""
    total = round(sum(line.quantity * line.unit_price for line in order.lines), 2)
    tier = "gold" if total >= 100 else "silver" if total >= 30 else "bronze"
    return EnrichedOrder(
        id=order.id,
        customer=order.customer,
        items=sum(line.quantity for line in order.lines),
        total=total,
        tier=tier,
    )


customers = sluice.VirtualObject("Customer", description="Per-customer running totals.")


@customers.handler()
async def add_order(ctx: sluice.ObjectContext, order: Order) -> CustomerTotals:
    """Count one order for the customer (the record key); exactly once per record."""
    totals = await ctx.get("totals", type_hint=CustomerTotals) or CustomerTotals(
        customer=ctx.key(), orders=0, spent=0.0, last_order=""
    )
    total = sum(line.quantity * line.unit_price for line in order.lines)
    totals = CustomerTotals(
        customer=ctx.key(),
        orders=totals.orders + 1,
        spent=round(totals.spent + total, 2),
        last_order=order.id,
    )
    ctx.set("totals", totals)
    return totals


@customers.handler(kind="shared")
async def totals(ctx: sluice.ObjectSharedContext) -> CustomerTotals | None:
    """The customer's totals so far."""
    result: CustomerTotals | None = await ctx.get("totals", type_hint=CustomerTotals)
    return result


app = sluice.app(enricher, customers)

if __name__ == "__main__":
    sluice.serve(
        enricher,
        customers,
        host=os.environ.get("HOST", "127.0.0.1"),
        port=int(os.environ.get("PORT", "9080")),
    )
