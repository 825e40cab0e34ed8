"""A handler endpoint that breaks the service protocol on purpose (test 8), written as a bare
ASGI app so that nothing of the SDK's own correctness gets in the way.

Discovery advertises one virtual object (``$FAULTY_OBJECT``, handler ``act``) speaking
protocol v5 only. What an invocation gets back depends on the key's prefix:

- ``ok-``: a correct answer (the input as output, then End);
- ``garbage-``: random bytes that are no service-protocol frame (seeded by
  ``$FAULTY_SEED``, the key and the attempt); over HTTP/2 the stream then stays open;
- ``undecodable-``: a valid frame header for an OutputCommand around a body that is not
  protobuf; over HTTP/2 the stream then stays open;
- ``version-``: a correct answer, but labelled protocol v6, which it never advertised;
- ``hang-``: nothing at all, until the broker gives up.

Each /invoke request appends ``attempt <key> <time>`` to ``$FAULTY_LOG``: the attempts the
endpoint saw, and when.
"""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

from sluice import protocol as p

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

ADVERTISED = 5
OBJECT = os.environ.get("FAULTY_OBJECT", "Faulty")
_CUSTOM_ENTRY = 0xFC00


def garbage(seed: str) -> bytes:
    """Bytes whose first header names no message type (nor a custom entry)."""
    rng = random.Random(seed)
    while True:
        data = rng.randbytes(rng.randrange(16, 2048))
        code = int.from_bytes(data[:2], "big")
        if code not in p.MESSAGE_TYPES and code & _CUSTOM_ENTRY != _CUSTOM_ENTRY:
            return data


# OutputCommand field 14 (a length-delimited value) claiming 127 bytes, followed by three.
UNDECODABLE = p.encode_raw(p.TYPE_CODES[p.OutputCommand], b"\x72\x7f\x01\x02\x03")


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    bidi = scope.get("http_version") == "2"
    if scope["path"].endswith("/discover"):
        await _discover(send, bidi)
    elif scope["path"] == f"/invoke/{OBJECT}/act":
        await _invoke(receive, send, bidi)
    else:
        await _answer(send, 404, b"{}", "application/json")


async def _discover(send: Send, bidi: bool) -> None:
    manifest = {
        "protocolMode": "BIDI_STREAM" if bidi else "REQUEST_RESPONSE",
        "minProtocolVersion": ADVERTISED,
        "maxProtocolVersion": ADVERTISED,
        "services": [
            {
                "name": OBJECT,
                "ty": "VIRTUAL_OBJECT",
                "handlers": [
                    {
                        "name": "act",
                        "ty": "EXCLUSIVE",
                        "input": {"required": False, "contentType": "application/json"},
                        "output": {"contentType": "application/json"},
                    }
                ],
            }
        ],
    }
    ctype = "application/vnd.restate.endpointmanifest.v2+json"
    await _answer(send, 200, json.dumps(manifest).encode(), ctype)


async def _answer(send: Send, status: int, body: bytes, ctype: str) -> None:
    headers = [(b"content-type", ctype.encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _read_journal(receive: Receive) -> tuple[p.StartMessage, bytes | None, bool]:
    """Read until the StartMessage and the journal it announces are in: (start, input, ended)."""
    decoder = p.FrameDecoder()
    frames: list[p.Frame] = []
    ended = False
    while not frames or len(frames) < 1 + frames[0].message.known_entries:  # type: ignore[union-attr]
        msg = await receive()
        if msg["type"] != "http.request":
            raise ConnectionError("the broker went away before the journal was in")
        frames += decoder.feed(msg.get("body", b""))
        if not msg.get("more_body", False):
            ended = True
            break
    start = frames[0].message
    assert isinstance(start, p.StartMessage)
    value = None
    if len(frames) > 1 and isinstance(frames[1].message, p.InputCommand):
        value = frames[1].message.value
    return start, value, ended


def _log_attempt(key: str) -> None:
    path = os.environ.get("FAULTY_LOG")
    if path:
        with open(path, "a") as f:
            f.write(f"attempt {key} {time.time():.4f}\n")


async def _invoke(receive: Receive, send: Send, bidi: bool) -> None:
    try:
        start, value, ended = await _read_journal(receive)
    except ConnectionError:
        return
    key = start.key
    _log_attempt(key)
    version = ADVERTISED
    if key.startswith("hang-"):
        await _disconnected(receive)
        return
    if key.startswith("garbage-"):
        attempt = start.retry_count_since_last_stored_entry
        body = garbage(f"{os.environ.get('FAULTY_SEED', '0')}-{key}-{attempt}")
    elif key.startswith("undecodable-"):
        body = UNDECODABLE
    else:
        if key.startswith("version-"):
            version = ADVERTISED + 1
        body = p.encode(p.OutputCommand(value=value or b"null")) + p.encode(p.EndMessage())
    headers = [(b"content-type", p.content_type(version).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    if not bidi:
        await send({"type": "http.response.body", "body": body})
        return
    await send({"type": "http.response.body", "body": body, "more_body": True})
    # The broker closes its half after a final message, or resets the stream when it gives
    # up on a broken one; the response ends only after that (hypercorn fails the connection
    # on a frame for a stream it already finished).
    while not ended:
        msg = await receive()
        if msg["type"] != "http.request":
            return  # reset: nothing more to send
        ended = not msg.get("more_body", False)
    await send({"type": "http.response.body", "body": b""})


async def _disconnected(receive: Receive) -> None:
    """Hang: read whatever comes (the broker may close its half) until the broker gives up."""
    while (await receive())["type"] != "http.disconnect":
        pass
