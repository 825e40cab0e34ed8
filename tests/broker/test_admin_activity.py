"""GET /activity: the work a broker has left, by where it waits, and whether it is quiet.
Each kind of unfinished work is made to stay (a long sleep, a delayed send, an output
cluster that does not answer) so that the count is checked while it is there, not raced."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from sluice.broker.admin._activity import activity
from sluice.broker.partition._records import Expire
from sluice.broker.server import Broker
from tests.ingress_kafka.conftest import Admin, new_topic, produce
from tests.kafka import Tansu
from tests.quiet import until_quiet

from .conftest import Client, ServiceProcess, free_port


async def _activity(client: Client) -> dict[str, Any]:
    r = await client.admin.get("/activity")
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


async def _until(client: Client, what: str, ok: Any, within: float = 30) -> dict[str, Any]:
    """GET /activity until ``ok(body)``; the last body in the failure."""
    deadline = time.monotonic() + within
    body = await _activity(client)
    while not ok(body):
        assert time.monotonic() < deadline, f"{what}: {body}"
        await asyncio.sleep(0.05)
        body = await _activity(client)
    return body


async def test_quiet_only_when_no_invocation_is_left(
    broker: Broker, client: Client, restate_service: ServiceProcess
) -> None:
    await client.register(restate_service.uri)
    body = await _activity(client)
    assert body["quiet"] is True, body
    assert set(body["invocations"].values()) == {0} and body["log"]["unapplied"] == 0, body

    # A send due in an hour: scheduled, on its timer.
    r = await client.call("/Greeter/greet/send?delay=1h", "later")
    assert r.status_code == 202, r.text
    later = r.json()["invocationId"]
    body = await _activity(client)
    assert body["quiet"] is False and body["invocations"]["scheduled"] == 1, body

    # A handler asleep for a minute (durably: a timer), and a call asleep as long: both stay
    # until killed (a sleep of a second could be over before a busy machine looked).
    r = await client.call("/Greeter/wait_long/send")
    asleep = r.json()["invocationId"]
    await _until(client, "the handler's sleep", lambda b: b["invocations"]["sleeping"] == 1)
    call = asyncio.ensure_future(client.call("/Greeter/sleepy", 60_000))
    body = await _until(client, "a second sleeper", lambda b: b["invocations"]["sleeping"] == 2)
    assert body["quiet"] is False, body
    r = await client.admin.get("/invocations", params={"service": "Greeter"})
    [called] = [j["id"] for j in r.json()["invocations"] if j["handler"] == "sleepy"]
    for iid in (later, asleep, called):
        assert (await client.admin.patch(f"/invocations/{iid}/kill")).status_code == 202
    answer = await call
    assert answer.status_code == 409 and answer.json()["message"].startswith("kill"), answer.text
    body = await _until(client, "quiet after the kills", lambda b: b["quiet"])
    assert set(body["invocations"].values()) == {0}, body

    # Appended and not yet applied: seen in the same turn of the event loop as the append.
    broker.submit(Expire(upto=0))
    now = activity(broker)
    assert now["log"]["unapplied"] == 1 and now["quiet"] is False, now
    await until_quiet([broker.admin_port], within=10)


@pytest.mark.kafka
async def test_subscription_in_flight_and_outbox_rows(
    kafka: Tansu,
    broker: Broker,
    client: Client,
    restate_service: ServiceProcess,
    egress_services: ServiceProcess,
) -> None:
    admin = Admin(broker.admin_port)
    try:
        await client.register(restate_service.uri)
        await admin.cluster(kafka)
        # Three records, each an invocation asleep for a minute: in flight until killed.
        topic = new_topic(kafka, 1)
        produce(kafka, topic, [(None, 60_000, 0)] * 3)
        await admin.subscribe(topic, "service://Greeter/sleepy", name="sleepers")
        body = await _until(client, "three sleepers", lambda b: b["invocations"]["sleeping"] == 3)
        [sub] = body["subscriptions"]
        assert (sub["name"], sub["in_flight"], sub["lag"]) == ("sleepers", 3, 0), sub
        assert body["quiet"] is False
        listed = (await client.admin.get("/invocations?status=suspended")).json()
        running = (await client.admin.get("/invocations?status=running")).json()
        for inv in listed["invocations"] + running["invocations"]:
            if inv["handler"] == "sleepy":
                await client.admin.patch(f"/invocations/{inv['id']}/kill")
        body = await _until(client, "quiet after the kills", lambda b: b["quiet"])
        [sub] = body["subscriptions"]
        assert (sub["in_flight"], sub["peak_in_flight"]) == (0, 3), sub

        # Results for a cluster that does not answer: their rows stay in the outbox.
        await admin.register(egress_services.uri, http1=True)
        r = await admin.http.post(
            "/kafka-clusters",
            json={
                "name": "nowhere",
                "properties": {"bootstrap.servers": f"127.0.0.1:{free_port()}"},
            },
        )
        assert r.status_code == 201, r.text
        src = new_topic(kafka, 1)
        produce(kafka, src, [(None, {"i": i}, 0) for i in range(5)])
        await admin.subscribe(
            src, "service://Enrich/map", name="stuck", output_topic="out", output_cluster="nowhere"
        )
        body = await _until(
            client,
            "five outbox rows, nothing else left",
            lambda b: (
                sum(e["rows"] for e in b["egress"]) == 5
                and set(b["invocations"].values()) == {0}
                and not any(s["in_flight"] or s["lag"] for s in b["subscriptions"])
            ),
        )
        assert body["quiet"] is False and {e["cluster"] for e in body["egress"]} == {"nowhere"}
    finally:
        await admin.close()
