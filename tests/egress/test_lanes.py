"""Egress lanes (issue 10): an invocation that keeps failing holds back the later results of
its own input partition (they leave in input order), never those of another input; once it
is paused (retries exhausted) it holds back nothing, and its result leaves when an operator
resumes it. Every result still leaves exactly once.

``Held/run`` fails while a file named by the record exists: the test decides when it ends.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from tests.broker.conftest import ServiceProcess
from tests.conftest import running_broker
from tests.kafka import Tansu

from .conftest import Admin, check_exactly_once, new_topic, produce, read_output

pytestmark = pytest.mark.kafka


async def _held_invocation(admin: Admin, status: str) -> dict[str, Any]:
    """The one invocation of Held, once it has failed at least once and is in ``status``."""
    for _ in range(600):
        r = await admin.http.get("/invocations", params={"service": "Held"})
        assert r.status_code == 200, r.text
        rows = [j for j in r.json()["invocations"] if j["retry_count"] >= 1]
        if rows and rows[0]["status"] == status:
            assert len(rows) == 1, rows
            return rows[0]  # type: ignore[no-any-return]
        await asyncio.sleep(0.1)
    raise AssertionError(f"no Held invocation became {status!r} after failing: {r.json()}")


async def _completed(admin: Admin, n: int, within: float = 60) -> list[str]:
    """The ids of the completed invocations of Held, once there are ``n`` of them."""
    deadline = time.monotonic() + within
    while True:
        r = await admin.http.get("/invocations", params={"service": "Held", "status": "completed"})
        assert r.status_code == 200, r.text
        ids = [j["id"] for j in r.json()["invocations"]]
        assert len(ids) <= n, f"more than {n} Held invocations completed: {r.text}"
        if len(ids) == n:
            return ids
        assert time.monotonic() < deadline, f"{len(ids)} of {n} Held invocations completed"
        await asyncio.sleep(0.1)


async def _held_input(
    admin: Admin, kafka: Tansu, hold: Path, n: int, **options: Any
) -> tuple[str, dict[int, bytes | None]]:
    """A subscription on a one-partition topic whose first record is held: its output topic
    and the inputs it must finally hold (i -> key)."""
    src, out = new_topic(kafka, 1), new_topic(kafka, 1)
    want = {i: f"h{i % 3}".encode() for i in range(n)}
    produce(
        kafka,
        src,
        [
            (want[i].decode(), {"i": i, **({"hold": str(hold)} if i == 0 else {})}, None)
            for i in range(n)
        ],
    )
    await admin.subscribe(src, "service://Held/run", output_topic=out, **options)
    return out, want


async def _other_input(admin: Admin, kafka: Tansu, n: int) -> tuple[str, dict[int, bytes | None]]:
    src, out = new_topic(kafka, 2), new_topic(kafka, 2)
    want = {i: f"k{i % 7}".encode() for i in range(n)}
    produce(kafka, src, [(want[i].decode(), {"i": i}, None) for i in range(n)])
    await admin.subscribe(src, "service://Enrich/echo", output_topic=out)
    return out, want


async def test_a_retrying_invocation_does_not_delay_another_subscriptions_output(
    tmp_path: Path, kafka: Tansu, egress_services: ServiceProcess
) -> None:
    hold = tmp_path / "hold"
    hold.touch()
    async with running_broker(tmp_path / "data") as broker:
        admin = Admin(broker.admin_port)
        try:
            await admin.register(egress_services.uri, http1=True)
            await admin.cluster(kafka)
            held_out, held_want = await _held_input(admin, kafka, hold, 10)
            await _held_invocation(admin, "backing-off")  # (its outbox row is reserved)
            out, want = await _other_input(admin, kafka, 200)
            # The held invocation retries all along: the brokers are never quiet (brokers=()).
            got = await asyncio.to_thread(read_output, kafka, out, len(want), brokers=())
            check_exactly_once(got, want)
            inv = await _held_invocation(admin, "backing-off")
            assert inv["retry_count"] >= 2, inv
            # Its own partition's later results wait behind it, in input order: their
            # invocations are done (once they all are: they run beside the other input's),
            # their results are not sent.
            done = await _completed(admin, len(held_want) - 1)
            assert inv["id"] not in done, inv
            early = await asyncio.to_thread(read_output, kafka, held_out, 1, 1.0, brokers=())
            assert early == [], [o.value for o in early]
            hold.unlink()
            got = await asyncio.to_thread(read_output, kafka, held_out, len(held_want))
            check_exactly_once(got, held_want)
            assert [o.value["i"] for o in got] == sorted(held_want), "not in input order"
        finally:
            await admin.close()


async def test_a_paused_invocation_holds_back_nothing_and_its_result_leaves_on_resume(
    tmp_path: Path, kafka: Tansu, egress_services: ServiceProcess
) -> None:
    hold = tmp_path / "hold"
    hold.touch()
    retry = {"max_attempts": 2, "initial_interval_ms": 20}
    async with running_broker(tmp_path / "data", retry=retry) as broker:
        admin = Admin(broker.admin_port)
        try:
            await admin.register(egress_services.uri, http1=True)
            await admin.cluster(kafka)
            held_out, held_want = await _held_input(admin, kafka, hold, 10)
            inv = await _held_invocation(admin, "paused")
            # The rest of its own partition leaves; the paused one's result does not.
            rest = {i: k for i, k in held_want.items() if i != 0}
            got = await asyncio.to_thread(read_output, kafka, held_out, len(rest), brokers=())
            check_exactly_once(got, rest)
            assert (await _held_invocation(admin, "paused"))["id"] == inv["id"]
            hold.unlink()
            r = await admin.http.patch(f"/invocations/{inv['id']}/resume")
            assert r.status_code == 202, r.text
            got = await asyncio.to_thread(read_output, kafka, held_out, len(held_want))
            # It left last, at the end of its lane (the documented rule), once.
            check_exactly_once(got, held_want, ordered=False)
            assert got[-1].value["i"] == 0, [o.value["i"] for o in got]
        finally:
            await admin.close()
