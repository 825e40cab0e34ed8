"""SIGKILL the handler process in the middle of a run: journaled steps do not execute again."""

from __future__ import annotations

import httpx

from .effects import release_path
from .support import Scenario, attach, eventually, send


async def test_sigkill_mid_run_resumes_from_the_journal(
    scenario: Scenario, ingress: httpx.AsyncClient, key: str
) -> None:
    invocation = await send(ingress, "/Crashy/run", key)

    async def steps() -> list[str]:
        return [e["step"] for e in scenario.effects("step", key)]

    # Steps one and two are journaled; three has started and blocks until released.
    await eventually(steps, until=lambda s: "three-start" in s, what="step three to start")
    assert await steps() == ["one", "two", "three-start"]

    handler = scenario.env.handler
    handler.kill()
    release_path(key, scenario.effects_file).touch()
    handler.start()

    result = await attach(ingress, invocation)
    assert result.status_code == 200, f"{result.text}\n{scenario.env.logs()}"
    assert result.json() == ["one", "two", "three"]
    # Three ran again (its result was never journaled); one and two were replayed, not re-run.
    assert await steps() == ["one", "two", "three-start", "three-start", "three-end"]
