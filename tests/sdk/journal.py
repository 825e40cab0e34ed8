"""Drive the SDK endpoint in-process with a hand-built journal; collect what it answers."""

from __future__ import annotations

from typing import Any

import sluice
from sluice import protocol as p


async def invoke(
    app: sluice.Endpoint,
    service: str,
    handler: str,
    entries: list[p.Message],
    *,
    version: int = 6,
    key: str = "",
    state: dict[bytes, bytes] | None = None,
    partial_state: bool = False,
    http2: bool = False,
) -> list[p.Message]:
    """One attempt with the request body closed; returns the frames the SDK sent back."""
    start = p.StartMessage(
        id=b"\x00" * 8 + b"0123456789abcdef",
        debug_id="inv_test",
        known_entries=len(entries),
        state_map=[p.StateEntry(key=k, value=v) for k, v in (state or {}).items()],
        partial_state=partial_state,
        key=key,
        random_seed=42,
    )
    body = p.encode(start) + b"".join(p.encode(e) for e in entries)
    out = await post(
        app, f"/invoke/{service}/{handler}", p.content_type(version), body, http2=http2
    )
    return [f.message for f in p.decode_all(out)]  # type: ignore[misc]


async def post(
    app: sluice.Endpoint, path: str, content_type: str, body: bytes, *, http2: bool = False
) -> bytes:
    """One request/response exchange with the endpoint, in-process: the 200 answer's body."""
    sent: list[dict[str, Any]] = []
    delivered = False

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": path,
        "http_version": "2" if http2 else "1.1",
        "headers": [(b"content-type", content_type.encode())],
    }
    await app(scope, receive, send)
    assert sent[0]["type"] == "http.response.start"
    assert sent[0]["status"] == 200, sent
    return b"".join(m.get("body", b"") for m in sent[1:])


def json_input(value: str) -> p.InputCommand:
    return p.InputCommand(value=value.encode())
