"""Workflows: three journaled steps run once per workflow id; the sign-up flow's durable promise."""

from __future__ import annotations

import httpx

from sluice.testing import Transport

from .support import Scenario, call_json, eventually, send


async def test_three_step_workflow_runs_each_step_once(
    scenario: Scenario, ingress: httpx.AsyncClient, key: str
) -> None:
    assert await call_json(ingress, f"/Steps/{key}/run", 1) == [2, 4, 7]
    steps = [e["step"] for e in scenario.effects("step", key)]
    assert steps == ["one", "two", "three"]
    executions = len(scenario.effects("body", key))
    if scenario.setup.always_replay:
        # Always-replay suspends at each of the three steps: the body ran again after each,
        # replaying the journal, and still no step executed twice.
        assert executions >= 4, executions
    elif scenario.setup.transport is Transport.H2:
        # Bidirectional streaming: one execution, nothing to replay.
        assert executions == 1, executions

    # The run handler runs once per workflow id: a second submission is refused,
    # and the output stays available.
    again = await ingress.post(f"/Steps/{key}/run", json=1)
    assert again.status_code == 409, again.text
    output = await ingress.get(f"/restate/workflow/Steps/{key}/output")
    assert output.status_code == 200, output.text
    assert output.json() == [2, 4, 7]
    assert len(scenario.effects("step", key)) == 3


async def test_signup_workflow_waits_for_its_promise(
    scenario: Scenario, ingress: httpx.AsyncClient, key: str
) -> None:
    await send(ingress, f"/SignUp/{key}/run", "ada@example.com")

    # While the run handler waits on the promise, a shared handler reads its stage.
    stage = await eventually(
        lambda: call_json(ingress, f"/SignUp/{key}/stage"),
        until=lambda s: s == "waiting for click",
        what="stage 'waiting for click'",
    )
    assert stage == "waiting for click"
    assert await call_json(ingress, f"/SignUp/{key}/link") is None

    emails = scenario.effects("email", key)
    assert len(emails) == 1, emails
    assert emails[0]["to"] == "ada@example.com"
    secret = emails[0]["secret"]

    assert await call_json(ingress, f"/SignUp/{key}/click", secret) is None
    result = await ingress.get(f"/restate/workflow/SignUp/{key}/attach")
    assert result.status_code == 200, result.text
    assert result.json() == "verified ada@example.com"
    assert await call_json(ingress, f"/SignUp/{key}/stage") == "verified"
    assert await call_json(ingress, f"/SignUp/{key}/link") == secret
    # The email went out once, however many times the run handler was replayed.
    assert len(scenario.effects("email", key)) == 1
