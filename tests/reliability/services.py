"""Handlers written with the Sluice SDK, for the reliability suite (served by hypercorn).

``Journey.trip`` uses most journal commands (state, run, sleep, call, one-way send, random,
uuid); its journals are saved under ``journals/`` by ``record_journals`` and must keep
replaying. ``services_reordered`` has the same handler with two steps swapped.
"""

from __future__ import annotations

import json
import os
from datetime import timedelta
from pathlib import Path
from typing import Any

import sluice
from sluice import Context, ObjectContext, Service, VirtualObject

echo = Service("Echo")


@echo.handler()
async def echo_text(ctx: Context, text: str) -> str:
    return text


@echo.handler()
async def length(ctx: Context, text: str) -> int:
    return len(text)


@echo.handler()
async def make(ctx: Context, n: int) -> str:
    return "z" * n


journey = VirtualObject("Journey")


@journey.handler()
async def trip(ctx: ObjectContext, name: str) -> dict[str, Any]:
    visits = (await ctx.get("visits", type_hint=int)) or 0
    packed = await ctx.run("pack", lambda: f"{name}-packed")
    await ctx.sleep(timedelta(milliseconds=5))
    n = await ctx.service_call(length, arg=packed)
    ctx.service_send(echo_text, arg=f"postcard from {name}")
    ctx.set("visits", visits + 1)
    went = await ctx.run("go", lambda: n * 2)
    return {
        "packed": packed,
        "n": n,
        "went": went,
        "visits": visits + 1,
        "dice": ctx.random().randint(1, 6),
        "ticket": str(ctx.uuid()),
    }


app = sluice.app(echo, journey)


def _recording(inner: Any) -> Any:
    """ASGI middleware: append each /invoke request and response body to $SLUICE_RECORD_DIR."""
    out = Path(os.environ.get("SLUICE_RECORD_DIR", ".")) / f"invoke-{os.getpid()}.jsonl"

    async def wrapped(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/invoke/"):
            await inner(scope, receive, send)
            return
        request, response = bytearray(), bytearray()

        async def rx() -> Any:
            msg = await receive()
            request.extend(msg.get("body", b""))
            return msg

        async def tx(msg: dict[str, Any]) -> None:
            response.extend(msg.get("body", b""))
            await send(msg)

        await inner(scope, rx, tx)
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        row = {
            "path": scope["path"],
            "content_type": headers.get("content-type", ""),
            "request": bytes(request).hex(),
            "response": bytes(response).hex(),
        }
        with out.open("a") as f:
            f.write(json.dumps(row) + "\n")

    return wrapped


recording_app = _recording(app)
