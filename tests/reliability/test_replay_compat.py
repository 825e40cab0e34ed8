"""Test 11: journals saved from real invocations keep replaying through the SDK.

``journals/*.json`` were recorded by ``record_journals`` (restate-server 1.7.12 and the Sluice
broker, protocol v6, HTTP/1.1 with always-replay): each holds the last request a handler got,
which carries the whole journal, and the frames it answered. Replaying that request through
today's SDK must answer the same frames byte for byte (same output, random values and UUIDs
included, and no command sent again); a handler whose step order changed must refuse with the
non-determinism error, 570.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import sluice
from sluice import protocol as p
from tests.sdk.journal import post

from .services import app as current
from .services_reordered import app as reordered

JOURNALS = sorted((Path(__file__).parent / "journals").glob("*.json"))


async def replay(app: sluice.Endpoint, fixture: dict[str, Any]) -> bytes:
    """One request/response attempt of the saved request, in-process; the response body."""
    body = bytes.fromhex(fixture["request"])
    return await post(app, fixture["path"], fixture["content_type"], body)


async def test_replay_compatibility(figures: dict[str, Any]) -> None:
    fixtures = {f.stem: json.loads(f.read_text()) for f in JOURNALS}
    figures["journals"] = len(fixtures)
    figures["recorded_with"] = sorted({f["recorded_with"] for f in fixtures.values()})
    assert set(figures["recorded_with"]) == {"restate-server", "sluice"}
    diverged: dict[str, str] = {}
    not_refused: dict[str, str] = {}
    entries = 0
    for name, fixture in fixtures.items():
        start = p.decode_all(bytes.fromhex(fixture["request"]))[0].message
        assert isinstance(start, p.StartMessage) and start.known_entries > 5, name
        entries += start.known_entries
        out = await replay(current, fixture)
        frames = [f.message for f in p.decode_all(out)]
        output = [m for m in frames if isinstance(m, p.OutputCommand)]
        if out != bytes.fromhex(fixture["response"]) or not output:
            diverged[name] = repr(frames)[:500]
        elif output[0].value is None or output[0].value.decode() != fixture["output"]:
            diverged[name] = f"output {output[0].value!r}"
        frames = [f.message for f in p.decode_all(await replay(reordered, fixture))]
        errors = [m for m in frames if isinstance(m, p.ErrorMessage)]
        if not errors or errors[0].code != 570 or "Journey" not in errors[0].message:
            not_refused[name] = repr(frames)[:500]
        elif any(isinstance(m, p.OutputCommand) for m in frames):
            not_refused[name] = "an output after the error"
    figures["journal_entries_replayed"] = entries
    figures["diverged"] = len(diverged)
    figures["reordered_refused_570"] = len(fixtures) - len(not_refused)
    assert not diverged, diverged
    assert not not_refused, not_refused
