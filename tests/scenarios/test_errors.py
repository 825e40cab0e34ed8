"""TerminalError reaches the caller with its code and message; a saga compensates on failure."""

from __future__ import annotations

import httpx

from .support import Scenario, booking_trail, call_json

BOOM = {"message": "boom: the teapot is empty", "code": 418}


def assert_terminal(response: httpx.Response, code: int, message: str) -> None:
    assert response.status_code == code, response.text
    assert response.json()["message"] == message, response.text


async def test_terminal_error_reaches_the_caller(ingress: httpx.AsyncClient) -> None:
    assert_terminal(await ingress.post("/Errors/fail", json=BOOM), 418, BOOM["message"])


async def test_terminal_error_propagates_through_a_call(ingress: httpx.AsyncClient) -> None:
    assert_terminal(await ingress.post("/Errors/call_fail", json=BOOM), 418, BOOM["message"])


async def test_calling_handler_can_catch_the_terminal_error(ingress: httpx.AsyncClient) -> None:
    caught = await call_json(ingress, "/Errors/catch_fail", BOOM)
    assert caught == {"message": BOOM["message"], "code": 418}


async def test_terminal_error_in_a_run_is_not_retried(
    scenario: Scenario, ingress: httpx.AsyncClient, key: str
) -> None:
    body = {"key": key, "message": "card declined", "code": 402}
    assert_terminal(await ingress.post("/Errors/fail_in_run", json=body), 402, "card declined")
    assert len(scenario.effects("fail_in_run", key)) == 1


async def test_saga_books_everything_when_nothing_fails(
    scenario: Scenario, ingress: httpx.AsyncClient, key: str
) -> None:
    assert await call_json(ingress, "/Trips/book", {"trip": key}) == ["flight", "hotel", "car"]
    assert booking_trail(scenario, key) == [("booked", i) for i in ("flight", "hotel", "car")]


async def test_saga_compensates_in_reverse_order_on_failure(
    scenario: Scenario, ingress: httpx.AsyncClient, key: str
) -> None:
    response = await ingress.post("/Trips/book", json={"trip": key, "fail_at": "car"})
    assert_terminal(response, 409, "car unavailable")
    trail = booking_trail(scenario, key)
    assert trail == [
        ("booked", "flight"),
        ("booked", "hotel"),
        ("failed", "car"),
        ("cancelled", "hotel"),
        ("cancelled", "flight"),
    ]
