"""``ctx.kafka_send``: one OneWayCallCommand to the broker's built-in ``sluice.Kafka/send``,
and nothing new on replay."""

from __future__ import annotations

import base64
import json

import sluice
from sluice import protocol as p

from .journal import invoke, json_input

svc = sluice.Service("Out")


@svc.handler()
async def emit(ctx: sluice.Context, n: int) -> None:
    ctx.kafka_send("orders-out", "k1", {"n": n}, headers={"h": "v"})
    ctx.kafka_send("raw-out", b"\xff", b"bytes", cluster="other")


app = sluice.app(svc)


async def test_kafka_send_is_a_one_way_call_to_the_builtin_service() -> None:
    out = await invoke(app, "Out", "emit", [json_input("7")])
    sends = [m for m in out if isinstance(m, p.OneWayCallCommand)]
    assert [(s.service_name, s.handler_name) for s in sends] == [("sluice.Kafka", "send")] * 2
    first, second = (json.loads(s.parameter) for s in sends)
    assert first["topic"] == "orders-out" and first["key"] == "k1"
    assert json.loads(base64.b64decode(first["value_b64"])) == {"n": 7}
    assert first["headers"] == {"h": "v"} and "cluster" not in first
    assert base64.b64decode(second["key_b64"]) == b"\xff"
    assert base64.b64decode(second["value_b64"]) == b"bytes" and second["cluster"] == "other"
    assert isinstance(out[-1], p.EndMessage)


async def test_kafka_send_replayed_sends_nothing_again() -> None:
    first = await invoke(app, "Out", "emit", [json_input("7")])
    sends = [m for m in first if isinstance(m, p.OneWayCallCommand)]
    again = await invoke(app, "Out", "emit", [json_input("7"), *sends])
    assert not [m for m in again if isinstance(m, p.OneWayCallCommand)]
    assert isinstance(again[-1], p.EndMessage)
