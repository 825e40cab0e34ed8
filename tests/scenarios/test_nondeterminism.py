"""Non-determinism: a replay that takes another path fails with protocol error 570.

`Nondeterministic/diverge` runs a `run` step on its first attempt, then fails on purpose; on the
retry it sleeps instead, so the replayed journal (a run at index 1) and the code (a sleep)
disagree. The broker records the SDK's error in the invocation's status, which the admin SQL
endpoint shows.
"""

from __future__ import annotations

import re
from typing import Any

import httpx

from .support import Scenario, eventually, send


async def test_journal_mismatch_is_reported(
    scenario: Scenario, ingress: httpx.AsyncClient, key: str
) -> None:
    invocation = await send(ingress, "/Nondeterministic/diverge", key)

    async def status() -> dict[str, Any]:
        rows = await scenario.env.query(
            "SELECT status, last_failure, last_failure_error_code, "
            "last_failure_related_command_index "
            f"FROM sys_invocation WHERE id = '{invocation}'"
        )
        return rows[0] if rows else {}

    def mismatch(row: dict[str, Any]) -> bool:
        return "570" in (row.get("last_failure") or "")

    try:
        row = await eventually(status, until=mismatch, what="a journal mismatch (570)")
    finally:
        # The mismatch is retried forever: end the invocation whatever happened.
        await scenario.env.kill_invocation(invocation)

    message: str = row["last_failure"]
    if scenario.setup.broker == "restate-server":
        # restate-server prefixes the SDK's message with the code and its name, and maps
        # protocol code 570 to its own error code RT0016 ("journal mismatch").
        assert message.startswith("[570 Journal mismatch]"), message
        assert row["last_failure_error_code"] == "RT0016", row
        # The SDK's ErrorMessage points at the diverging command, and restate-server keeps it.
        assert row["last_failure_related_command_index"] == 1, row
    # Both SDKs name the entry index and both commands (the journal's run, the code's sleep);
    # the advice text may mention ctx.run, which must not count as naming the command.
    assert re.search(r"index\D{0,3}1\b", message), message
    assert re.search(r"(?<!ctx\.)\brun(command)?\b", message, re.IGNORECASE), message
    assert re.search(r"\bsleep(command)?\b", message, re.IGNORECASE), message
    if scenario.setup.sdk == "sluice":
        # The Sluice SDK's message also names the handler.
        assert "Nondeterministic/diverge" in message, message
