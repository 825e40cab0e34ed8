"""Awakeables: a handler waits on an id that someone else completes through the ingress.

The ids are `sign_1...` (invocation id + signal index). An SDK that says `prom_1...` (the
legacy, completion-indexed form) makes restate-server look for a journal completion that
does not exist: these tests caught exactly that in the Sluice SDK.
"""

from __future__ import annotations

import httpx

from .support import attach, call_json, eventually, send


async def _pending_awakeable(ingress: httpx.AsyncClient, key: str) -> str:
    awakeable_id: str = await eventually(
        lambda: call_json(ingress, f"/Approval/{key}/pending"), what="the awakeable id"
    )
    return awakeable_id


async def test_awakeable_resolved_through_the_ingress(ingress: httpx.AsyncClient, key: str) -> None:
    invocation = await send(ingress, f"/Approval/{key}/request", "payment")
    awakeable_id = await _pending_awakeable(ingress, key)

    resolved = await ingress.post(f"/restate/awakeables/{awakeable_id}/resolve", json="approved")
    assert resolved.status_code in (200, 202), resolved.text
    result = await attach(ingress, invocation)
    assert result.status_code == 200, result.text
    assert result.json() == "payment: approved"
    assert await call_json(ingress, f"/Approval/{key}/pending") is None


async def test_awakeable_rejected_through_the_ingress(ingress: httpx.AsyncClient, key: str) -> None:
    invocation = await send(ingress, f"/Approval/{key}/request", "refund")
    awakeable_id = await _pending_awakeable(ingress, key)

    rejected = await ingress.post(
        f"/restate/awakeables/{awakeable_id}/reject",
        content=b"not allowed",
        headers={"content-type": "text/plain"},
    )
    assert rejected.status_code in (200, 202), rejected.text
    # The rejection is a terminal failure of the awaiting handler, surfaced to its caller.
    result = await attach(ingress, invocation)
    assert result.status_code >= 400, result.text
    assert "not allowed" in result.json()["message"]
