"""Test 4: random programs over HTTP, with idempotency keys and retrying clients, while the
broker is SIGKILLed every 2 to 5 seconds and restarted.

Each program (``services_programs.execute``) mixes state updates, calls to another key,
delayed one-way sends, awakeables that this test resolves through the ingress, and ``run``
steps. Every request carries an idempotency key and is resent until it gets an answer. At
the end each key's ``count`` (updates applied) and ``sum`` (their deltas) must equal the
model kept here, and no ``run`` step may execute again once its result was journaled.

A stuck detector fails the test with the open invocations (admin ``/query``) when no
program completes for 60 s.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from sluice.testing import TestEnvironment
from tests.conftest import ServerLog

from ._chaos import ClosedLoop, Killer, Retrying, environment, open_invocations, spread
from .conftest import sized

pytestmark = [pytest.mark.slow, pytest.mark.timeout(sized(300, 3600))]

PROGRAMS = sized(5_000, 100_000)
KEYS = 1_000
CONCURRENCY = 40  # programs in flight: clients of one connection each, closed loop
RESOLVERS = 8  # connections that resolve awakeables
STUCK_S = 60.0
OPS = ("add", "call", "send", "awake", "run")
WEIGHTS = (3, 2, 2, 1, 2)


@dataclass
class Plan:
    """The programs, and what the counters must read once they all ran."""

    programs: list[dict[str, Any]] = field(default_factory=list)
    count: Counter[str] = field(default_factory=Counter)
    sum: Counter[str] = field(default_factory=Counter)
    steps: Counter[str] = field(default_factory=Counter)

    def deltas(self) -> dict[tuple[str, int], int]:
        """(program id, step) -> the value this test resolves that step's awakeable with."""
        return {
            (p["id"], i): s["n"]
            for p in self.programs
            for i, s in enumerate(p["steps"])
            if s["op"] == "awake"
        }


def make_plan(rng: random.Random, n: int, *, key_count: int = KEYS) -> Plan:
    """``n`` random programs over ``key_count`` keys."""
    run = f"{rng.getrandbits(32):08x}"
    keys = [f"k{run}-{i}" for i in range(key_count)]
    plan = Plan()
    for p in range(n):
        own = rng.randrange(key_count)
        steps = []
        for _ in range(rng.randint(1, 5)):
            op = rng.choices(OPS, WEIGHTS)[0]
            if op == "call" and own == key_count - 1:
                op = "add"  # calls go to higher keys only: no cycle of exclusive handlers
            step: dict[str, Any] = {"op": op, "n": rng.randint(1, 1000)}
            target = keys[own]
            if op == "call":
                target = step["key"] = keys[rng.randrange(own + 1, key_count)]
            elif op == "send":
                target = step["key"] = rng.choice(keys)
                step["delay_ms"] = rng.randint(1, 1000)
            if op != "run":
                plan.count[target] += 1
                plan.sum[target] += step["n"]
            plan.steps[op] += 1
            steps.append(step)
        plan.programs.append({"id": f"p{run}-{p}", "key": keys[own], "steps": steps})
    return plan


class Markers:
    """Follows the handler's marker file: resolves each published awakeable once, and keeps
    every execution of every ``run`` step, in order."""

    def __init__(self, path: Path, client: Retrying, deltas: dict[tuple[str, int], int]) -> None:
        self.path = path
        self.client = client
        self.deltas = deltas
        self.runs: defaultdict[tuple[str, str], list[str]] = defaultdict(list)
        self.resolved: set[str] = set()
        self.publishes = 0
        self._pending: set[asyncio.Task[Any]] = set()
        self._pos = 0
        self._rest = b""

    def _read(self) -> list[list[str]]:
        if not self.path.exists():
            return []
        with self.path.open("rb") as f:
            f.seek(self._pos)
            chunk = f.read()
        self._pos += len(chunk)
        *lines, self._rest = (self._rest + chunk).split(b"\n")
        return [line.decode().split() for line in lines]

    def poll(self) -> None:
        for kind, pid, step, value in self._read():
            if kind == "run":
                self.runs[pid, step].append(value)
            elif kind == "awk":
                self.publishes += 1
                if value not in self.resolved:
                    self.resolved.add(value)
                    n = self.deltas[pid, int(step)]
                    url = f"/restate/awakeables/{value}/resolve"
                    self._pending.add(asyncio.ensure_future(self.client.post(url, n, ok=202)))

    async def follow(self) -> None:
        while True:
            self.poll()
            for task in [t for t in self._pending if t.done()]:
                self._pending.discard(task)
                task.result()  # a rejected resolve fails the test
            await asyncio.sleep(0.02)


async def read_totals(env: TestEnvironment) -> dict[str, dict[str, int]]:
    rows = await env.query(
        "SELECT service_key, key, value_utf8 FROM state WHERE service_name = 'Program'"
    )
    return {r["service_key"]: json.loads(r["value_utf8"]) for r in rows if r["key"] == "totals"}


def off_by(plan: Plan, totals: dict[str, dict[str, int]]) -> tuple[int, int, list[str]]:
    """Updates lost and duplicated (from the per-key counts), and the keys that differ."""
    lost = duplicated = 0
    wrong = []
    for key in plan.count.keys() | totals.keys():
        got = totals.get(key, {"count": 0, "sum": 0})
        diff = got["count"] - plan.count[key]
        lost += max(0, -diff)
        duplicated += max(0, diff)
        if diff or got["sum"] != plan.sum[key]:
            wrong.append(
                f"{key}: count {got['count']} sum {got['sum']}, "
                f"want {plan.count[key]} and {plan.sum[key]}"
            )
    return lost, duplicated, wrong


def check_runs(
    plan: Plan, answers: dict[str, dict[str, Any]], runs: dict[tuple[str, str], list[str]]
) -> tuple[int, list[str]]:
    """Executions before the journaled one (allowed), and every execution after it (not)."""
    before = 0
    problems = []
    for p in plan.programs:
        pid = p["id"]
        want = {str(i) for i, s in enumerate(p["steps"]) if s["op"] == "run"}
        got = answers[pid]
        if got["id"] != pid or set(got["runs"]) != want:
            problems.append(f"{pid}: answered {got}, run steps {sorted(want)}")
            continue
        for step, token in got["runs"].items():
            execs = runs.get((pid, step), [])
            if token not in execs:
                problems.append(f"{pid} step {step}: journaled {token}, executions {execs}")
                continue
            at = execs.index(token)
            before += at
            if at != len(execs) - 1:
                problems.append(f"{pid} step {step}: ran again after {token}: {execs[at + 1 :]}")
    return before, problems


async def test_programs_survive_broker_kills(  # noqa: PLR0915 - one scenario, in order
    tmp_path: Path, rng: random.Random, figures: dict[str, Any], server_log: ServerLog
) -> None:
    plan = make_plan(rng, PROGRAMS)
    markers_path = tmp_path / "markers.txt"
    target = "tests.reliability.services_programs:app"
    env = environment(tmp_path, target, markers_path, server_log.flags())
    figures.update(programs=PROGRAMS, keys=KEYS, steps=sum(plan.steps.values()))
    figures["steps_by_kind"] = dict(plan.steps)
    env.start()
    killer = Killer(env.broker, rng, every=(2.0, 5.0))  # type: ignore[arg-type]
    completions: list[float] = []
    answers: dict[str, dict[str, Any]] = {}
    loop = ClosedLoop(env, CONCURRENCY)

    async def execute(client: Retrying, p: dict[str, Any]) -> None:
        body = {"id": p["id"], "steps": p["steps"]}
        r = await client.post(f"/Program/{p['key']}/execute", body, ok=200, idempotency_key=p["id"])
        answers[p["id"]] = r.json()
        completions.append(time.monotonic())

    try:
        limits = httpx.Limits(max_connections=RESOLVERS)
        async with env.ingress_client(timeout=30, limits=limits) as http:
            resolver = Retrying(http)
            markers = Markers(markers_path, resolver, plan.deltas())
            started = time.monotonic()
            done = asyncio.Event()
            follower = asyncio.ensure_future(markers.follow())
            kills = asyncio.ensure_future(killer.run(done))
            work = asyncio.ensure_future(loop.run(plan.programs, execute))
            try:
                while not work.done():
                    await asyncio.wait([work, follower, kills], timeout=1.0)
                    for task in (follower, kills):
                        if task.done():
                            task.result()  # a failed restart or resolve ends the test
                    last = completions[-1] if completions else started
                    if time.monotonic() - last > STUCK_S and not work.done():
                        pytest.fail(
                            f"stuck: no program completed for {STUCK_S:.0f}s, "
                            f"{len(answers)}/{PROGRAMS} done\n{await open_invocations(env)}"
                        )
                work.result()
                elapsed = time.monotonic() - started
            finally:
                done.set()
                work.cancel()
                await kills
            figures.update(kills=len(killer.kills), client_retries=loop.retries + resolver.retries)
            figures["programs_per_s"] = round(PROGRAMS / elapsed, 1)

            # Delayed sends may still be due; the broker is no longer killed.
            deadline = time.monotonic() + 30
            while True:
                totals = await read_totals(env)
                lost, duplicated, wrong = off_by(plan, totals)
                if not wrong or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.5)
            follower.cancel()
            markers.poll()
            before, run_problems = check_runs(plan, answers, markers.runs)
            killer.sample_rss()
            figures.update(lost=lost, duplicated=duplicated, keys_wrong=len(wrong))
            figures.update(
                awakeables_resolved=len(markers.resolved),
                awakeable_publishes=markers.publishes,
                runs_reexecuted_before_journaled=before,
                runs_reexecuted_after_journaled=len(run_problems),
                recovery_s=spread(killer.recovery(completions)),
                restart_s=spread(killer.restart_s),
                peak_rss_mb=round(killer.peak_rss, 1),
            )
            assert not wrong, f"{len(wrong)} keys differ from the model:\n" + "\n".join(wrong[:30])
            assert not run_problems, "\n".join(run_problems[:30])
            assert killer.kills, "the broker was never killed: the test proved nothing"
    finally:
        env.close()
