"""Egress from a handler written with the official restate-sdk: ``sluice.Kafka/send`` is a
one-way call, so ``ctx.generic_send`` sends a Kafka record durably."""

from __future__ import annotations

import json
from typing import Any

from restate import Context, Service
from restate import app as restate_app

sender = Service("RestateSender")


@sender.handler()
async def send(ctx: Context, rec: dict[str, Any]) -> None:
    record = {"topic": rec["topic"], "key": rec["key"], "value": {"i": rec["i"]}}
    ctx.generic_send("sluice.Kafka", "send", json.dumps(record).encode())


app = restate_app([sender])
