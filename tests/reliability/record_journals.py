"""Record journals of real invocations as replay fixtures (test 11), once per release.

    SLUICE_RESTATE_SERVER=.tools/restate-server-1.7.12/bin/restate-server \
        .venv/bin/python -m tests.reliability.record_journals

Runs ``tests.reliability.services`` over HTTP/1.1 with always-replay under restate-server and
under the Sluice broker, calls ``Journey/{key}/trip`` a few times, and keeps, per invocation,
the last request the handler got (the whole journal, replayed) with the output it answered.
Each becomes ``journals/<broker>-<n>.json``.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
from pathlib import Path

from sluice import protocol as p
from sluice.testing import harness

HERE = Path(__file__).parent
NAMES = ["ada", "grace", "edsger"]


async def record(broker: str) -> list[dict[str, object]]:
    with tempfile.TemporaryDirectory() as tmp:
        with harness(
            "tests.reliability.services:recording_app",
            broker=broker,  # type: ignore[arg-type]
            transport="http1.1",
            always_replay=True,
            env={"SLUICE_RECORD_DIR": tmp},
        ) as env:
            async with env.ingress_client(timeout=30) as c:
                for i, name in enumerate(NAMES):
                    for _ in range(i + 1):  # later keys carry state from earlier visits
                        r = await c.post(f"/Journey/{name}/trip", json=name)
                        assert r.status_code == 200, r.text
        rows = [
            json.loads(line)
            for f in Path(tmp).glob("*.jsonl")  # noqa: ASYNC240 (a one-off script)
            for line in f.read_text().splitlines()
        ]
    out = []
    for row in rows:
        if not row["path"].endswith("/Journey/trip"):
            continue
        frames = [f.message for f in p.decode_all(bytes.fromhex(row["response"]))]
        done = [m for m in frames if isinstance(m, p.OutputCommand)]
        if done:
            out.append(
                {
                    "recorded_with": broker,
                    "path": row["path"],
                    "content_type": row["content_type"],
                    "request": row["request"],
                    "response": row["response"],
                    "output": done[0].value.decode() if done[0].value else None,
                }
            )
    return out


def main() -> None:
    (HERE / "journals").mkdir(exist_ok=True)
    for broker in ("restate-server", "sluice"):
        for i, fixture in enumerate(asyncio.run(record(broker))):
            path = HERE / "journals" / f"{broker}-{i}.json"
            path.write_text(json.dumps(fixture, indent=1) + "\n")
            print(path, fixture["output"])


if __name__ == "__main__":
    main()
