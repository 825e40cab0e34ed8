"""End to end against restate-sdk handlers: the programming model on the Sluice broker."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from .conftest import Client, ServiceProcess

MODES = pytest.mark.parametrize("http1", [False, True], ids=["h2c", "http1.1"])


async def eventually(fn, timeout: float = 10.0):  # type: ignore[no-untyped-def]  # noqa: ASYNC109
    deadline = time.monotonic() + timeout
    while True:
        result = await fn()
        if result or time.monotonic() > deadline:
            return result
        await asyncio.sleep(0.05)


@MODES
async def test_sleep_calls_and_delayed_send(
    client: Client, restate_service: ServiceProcess, http1: bool
) -> None:
    await client.register(restate_service.uri, http1=http1)
    t0 = time.monotonic()
    r = await client.call("/Greeter/sleepy", 300)
    assert r.status_code == 200 and r.json() == "rested"
    assert time.monotonic() - t0 >= 0.3
    r = await client.call("/Greeter/chain", "bob")
    assert r.status_code == 200, r.text
    assert r.json() == "Hello bob! #1"

    async def delayed_send_landed() -> bool:
        return (await client.call("/Counter/bob/get")).json() == 11

    assert await eventually(delayed_send_landed)


@MODES
async def test_terminal_error_maps_to_http_status(
    client: Client, restate_service: ServiceProcess, http1: bool
) -> None:
    await client.register(restate_service.uri, http1=http1)
    r = await client.call("/Greeter/fail", "nope")
    assert r.status_code == 418
    assert r.json()["message"] == "nope"
    assert r.headers["x-restate-error-source"] == "invocation"


@MODES
async def test_workflow_promise_and_run_once(
    client: Client, restate_service: ServiceProcess, http1: bool
) -> None:
    await client.register(restate_service.uri, http1=http1)
    r = await client.call("/SignUp/w1/run/send", "a@b.c")
    assert r.status_code == 202 and r.json()["status"] == "Accepted"
    r2 = await client.call("/SignUp/w1/run/send", "a@b.c")
    assert r2.json() == {"invocationId": r.json()["invocationId"], "status": "PreviouslyAccepted"}

    async def waiting() -> bool:
        r = await client.call("/SignUp/w1/stage")
        return bool(r.content) and r.json() == "waiting"  # empty: the run has not set it yet

    assert await eventually(waiting)
    out = await client.ingress.get("/restate/workflow/SignUp/w1/output")
    assert out.status_code == 470
    r = await client.call("/SignUp/w1/click", "s3cret")
    assert r.status_code == 200, r.text
    att = await client.ingress.get("/restate/workflow/SignUp/w1/attach")
    assert att.status_code == 200 and att.json() == "a@b.c:s3cret"
    # Run once: calling run again is refused (409, like restate-server); output stays.
    again = await client.call("/SignUp/w1/run", "other@x.y")
    assert again.status_code == 409 and "already invoked" in again.json()["message"]
    out = await client.ingress.get("/restate/workflow/SignUp/w1/output")
    assert out.json() == "a@b.c:s3cret"


@MODES
async def test_awakeables(client: Client, restate_service: ServiceProcess, http1: bool) -> None:
    await client.register(restate_service.uri, http1=http1)
    for how in ("ingress", "handler", "reject"):
        await client.call("/Counter/awk/reset")
        call = asyncio.ensure_future(client.call("/Greeter/wait_awakeable"))

        async def awk_id() -> str | None:
            r = await client.call("/Counter/awk/recall")
            return r.json() if r.content else None  # type: ignore[no-any-return]

        awk = await eventually(awk_id)
        assert awk and awk.startswith(("prom_1", "sign_1"))  # restate-sdk 1.3 says sign_1
        if how == "ingress":
            r = await client.ingress.post(f"/restate/awakeables/{awk}/resolve", json="from-ingress")
            assert r.status_code == 202
            assert (await call).json() == "from-ingress"
        elif how == "handler":
            assert (await client.call("/Greeter/resolver", awk)).status_code == 200
            assert (await call).json() == "from-handler"
        else:
            r = await client.ingress.post(
                f"/restate/awakeables/{awk}/reject", content=b"went wrong"
            )
            assert r.status_code == 202
            res = await call
            assert res.status_code == 500 and "went wrong" in res.json()["message"]


@MODES
async def test_idempotency_key(
    client: Client, restate_service: ServiceProcess, http1: bool
) -> None:
    await client.register(restate_service.uri, http1=http1)
    hdr = {"idempotency-key": f"k-{http1}"}
    results = await asyncio.gather(
        *(client.call("/Counter/idem/add", 5, headers=hdr) for _ in range(5))
    )
    assert {r.json() for r in results} == {5}
    assert len({r.headers["x-restate-id"] for r in results}) == 1
    assert (await client.call("/Counter/idem/get")).json() == 5
    iid = results[0].headers["x-restate-id"]
    out = await client.ingress.get(f"/restate/invocation/{iid}/output")
    assert out.status_code == 200 and out.json() == 5
    by_key = await client.ingress.get(f"/restate/invocation/Counter/idem/add/k-{http1}/output")
    assert by_key.status_code == 200 and by_key.json() == 5
    s = await client.call("/Counter/idem/add/send", 5, headers=hdr)
    assert s.json()["status"] == "PreviouslyAccepted"


async def test_retries_keep_journaled_run(
    client: Client, restate_service: ServiceProcess, markers: Path
) -> None:
    await client.register(restate_service.uri)
    r = await client.call("/Greeter/flaky", "retry-1")
    assert r.status_code == 200 and r.json() == "done"
    runs = markers.read_text().split() if markers.exists() else []  # noqa: ASYNC240
    assert runs.count("retry-1") == 1, "a journaled run step executed again on retry"


@MODES
async def test_cancel_and_kill(
    client: Client, restate_service: ServiceProcess, http1: bool
) -> None:
    await client.register(restate_service.uri, http1=http1)
    for op, code in (("cancel", 409), ("kill", 409)):
        r = await client.call("/Greeter/wait_long/send")
        iid = r.json()["invocationId"]

        async def suspended_or_running(iid: str = iid) -> bool:
            x = await client.admin.get(f"/invocations/{iid}")
            return x.status_code == 200 and x.json()["status"] in ("running", "suspended")

        assert await eventually(suspended_or_running)
        r = await client.admin.patch(f"/invocations/{iid}/{op}")
        assert r.status_code == 202, r.text

        async def completed(iid: str = iid) -> bool:
            x = await client.admin.get(f"/invocations/{iid}")
            return x.status_code == 200 and x.json()["status"] == "completed"

        assert await eventually(completed)
        out = await client.ingress.get(f"/restate/invocation/{iid}/output")
        assert out.status_code == code and out.json()["message"].startswith(("cancel", "kill"))


async def test_exclusive_fifo_and_shared_concurrent(
    client: Client, restate_service: ServiceProcess
) -> None:
    """While an exclusive handler holds the key, the next exclusive ones queue in arrival
    order and a shared one runs: judged by the invocations' states, not by timing."""
    await client.register(restate_service.uri)

    async def status(iid: str) -> str:
        return str((await client.admin.get(f"/invocations/{iid}")).json()["status"])

    holder = (await client.call("/Counter/fifo/hold/send")).json()["invocationId"]

    async def holding() -> bool:
        return await status(holder) in ("running", "suspended")

    assert await eventually(holding, timeout=30)
    adds = []
    for i in (1, 2, 3):
        adds.append((await client.call("/Counter/fifo/slow_add/send", i)).json()["invocationId"])
    assert [await status(a) for a in adds] == ["inboxed"] * 3
    # Had the shared handler queued behind the exclusive ones, it would wait for the hour.
    g = await client.call("/Counter/fifo/get")
    assert g.status_code == 200 and g.json() == 0, g.text
    assert await holding() and [await status(a) for a in adds] == ["inboxed"] * 3
    assert (await client.admin.patch(f"/invocations/{holder}/kill")).status_code == 202
    results = [(await client.ingress.get(f"/restate/invocation/{a}/attach")).json() for a in adds]
    assert results == [1, 3, 6]
