"""Side effects of the example services, written where the test can count them.

The handler process appends one JSON line per executed side effect to the file named by
`$SCENARIO_EFFECTS`. Writes go straight to the kernel (no buffering in the process), so a
SIGKILL of the handler cannot lose a line that a step already wrote.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

EFFECTS_ENV = "SCENARIO_EFFECTS"


def effects_path() -> Path:
    return Path(os.environ[EFFECTS_ENV])


def record(kind: str, key: str, **fields: Any) -> None:
    """Append one executed side effect: `{"kind": ..., "key": ..., **fields}`."""
    line = json.dumps({"kind": kind, "key": key, **fields}) + "\n"
    fd = os.open(effects_path(), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def release_path(key: str, effects_file: Path | None = None) -> Path:
    """The file whose creation lets a blocked step of invocation `key` finish."""
    return (effects_file or effects_path()).with_name(f"release-{key}")


async def wait_for_release(key: str, limit: float = 60.0) -> None:
    """Block a step until the test creates `release_path(key)` (crash tests kill us meanwhile)."""
    path = release_path(key)
    for _ in range(int(limit / 0.02)):
        if path.exists():
            return
        await asyncio.sleep(0.02)
    raise RuntimeError(f"{path} was never created")


def attempt(key: str) -> int:
    """Count executions of a handler body, deliberately outside the journal (1 on the first)."""
    record("attempt", key)
    lines = effects_path().read_text().splitlines()
    return sum(1 for line in lines if json.loads(line) == {"kind": "attempt", "key": key})
