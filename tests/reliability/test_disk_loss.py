"""Test 13: a broker on the Kafka log loses its disk under load, and one on an empty data
directory with the same ``--log`` finishes every accepted request and record exactly once.

Three kinds of work run together on one broker (``--log kafka://...``):

- random programs over HTTP (test 4's ``Program``: state updates, calls, delayed sends,
  awakeables, ``run`` steps), every request with an idempotency key, resent until answered;
- Kafka → the ``Tally`` virtual object → Kafka (test 2's pipeline);
- ``Nap`` workflows that sleep durably, some of them asleep when the broker dies.

Once enough of each is done (and, with snapshots, one was taken), the broker is SIGKILLed, its
data directory deleted, and a broker started on an empty one with the same flags. Then: each
program key's count and sum equal the model's, every program answered before the disk was
lost gets the same answer again, no ``run`` step executes again once journaled; each Kafka
input leaves exactly once (by content and by the ``sluice-producer``/``sluice-seq`` headers),
in per-key order, with the model's running sums; each workflow runs once, wakes once and never
early. Three ways: ``whole-log`` replays the log from its start, ``snapshot-dir`` and
``snapshot-s3`` restore the newest snapshot (a directory, a bucket on moto_server) and replay
the log from its LSN.

Figures: the work done when the broker died, how long the new broker took to start and to
finish, records replayed, lost, duplicated and re-executed work. Tansu keeps records in
memory (DESIGN.md), so the Kafka side costs less than on Apache Kafka.
"""

from __future__ import annotations

import asyncio
import json
import random
import shutil
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from tests.broker.conftest import BrokerProcess, ServiceProcess
from tests.egress.conftest import check_exactly_once, new_topic, produce, read_output
from tests.kafka import Tansu

from ._chaos import Retrying
from .conftest import peak_rss_mb, sized
from .kafka_pipeline import LiveOutput, Model, diagnose, score, set_up
from .test_http_programs import Markers, Plan, check_runs, make_plan, off_by

T = TypeVar("T")

pytestmark = [pytest.mark.kafka, pytest.mark.slow, pytest.mark.timeout(sized(300, 1800))]

PROGRAMS = sized(400, 4_000)
PROGRAM_KEYS = sized(100, 1_000)
CLIENTS = 20  # closed-loop clients of one connection each
RECORDS = sized(3_000, 20_000)
RECORD_KEYS = 50
PARTITIONS = 4
NAPS = sized(60, 600)
GRANULARITY_S = 0.002  # the SDK and the broker count milliseconds, rounded down
STUCK_S = 60.0  # no progress for this long after the restore: stuck


def _naps(rng: random.Random, run: str) -> tuple[dict[str, int], dict[str, int]]:
    """Workflow id -> sleep in ms, of two halves: short naps that start with the load (and
    mostly wake before the broker dies), long ones that start just before it dies (and wake
    after the restore)."""
    short = {f"n{run}-{i}": rng.randint(100, 1_000) for i in range(NAPS // 2)}
    long = {f"n{run}-{i}": rng.randint(4_000, 8_000) for i in range(NAPS // 2, NAPS)}
    return short, long


def _nap_marks(path: Path) -> dict[str, dict[str, list[tuple[str, float]]]]:
    """``slept``/``woke`` -> workflow id -> (token, time) of each execution of that step."""
    out: dict[str, dict[str, list[tuple[str, float]]]] = {
        "slept": defaultdict(list),
        "woke": defaultdict(list),
    }
    for line in path.read_text().splitlines() if path.exists() else []:
        kind, wid, token, at = line.split()
        if kind in out:
            out[kind][wid].append((token, float(at)))
    return out


async def _query(c: httpx.AsyncClient, admin: str, sql: str) -> list[dict[str, Any]]:
    r = await c.post(f"{admin}/query", json={"query": sql}, headers={"accept": "application/json"})
    assert r.status_code == 200, r.text
    rows: list[dict[str, Any]] = r.json()["rows"]
    return rows


async def _totals(c: httpx.AsyncClient, admin: str) -> dict[str, dict[str, int]]:
    rows = await _query(
        c, admin, "SELECT service_key, key, value_utf8 FROM state WHERE service_name = 'Program'"
    )
    return {r["service_key"]: json.loads(r["value_utf8"]) for r in rows if r["key"] == "totals"}


async def _open(c: httpx.AsyncClient, admin: str, log: Path) -> str:
    """What a stuck run reports: the invocations not completed, the tail of the broker's log."""
    try:
        rows = await _query(
            c, admin, "SELECT id, target, status, retry_count, last_failure FROM sys_invocation"
        )
        open_rows = [r for r in rows if r["status"] != "completed"]
        shown = "\n".join(json.dumps(r) for r in open_rows[:40])
        head = f"{len(rows)} invocations, {len(open_rows)} open:\n{shown}"
    except (httpx.HTTPError, AssertionError) as e:
        head = f"(query failed: {e!r})"
    tail = await asyncio.to_thread(log.read_text, errors="replace")
    return f"{head}\n{tail[-3000:]}"


async def _health_log(c: httpx.AsyncClient, admin: str) -> dict[str, Any]:
    log: dict[str, Any] = (await c.get(f"{admin}/health")).json()["log"]
    return log


class Load:
    """The HTTP side of the load: closed-loop clients of one connection each that run the
    programs, start the workflows and read their outputs; each resends (same idempotency key)
    until answered, across the broker's death."""

    def __init__(self, base: str, plan: Plan) -> None:
        self.base = base
        self.plan = plan
        self.answers: dict[str, dict[str, Any]] = {}
        self.started: set[str] = set()
        self.clients: list[Retrying] = []

    @property
    def retries(self) -> int:
        return sum(c.retries for c in self.clients)

    async def each(
        self, items: Iterable[T], fn: Callable[[Retrying, T], Awaitable[None]], clients: int
    ) -> None:
        """``fn(client, item)`` for every item, by ``clients`` clients that each take the next
        item when done with one."""
        todo = iter(items)
        limits = httpx.Limits(max_connections=1)

        async def worker() -> None:
            async with httpx.AsyncClient(base_url=self.base, timeout=30, limits=limits) as http:
                client = Retrying(http)
                self.clients.append(client)
                for item in todo:
                    await fn(client, item)

        await asyncio.gather(*(worker() for _ in range(clients)))

    async def execute(self, client: Retrying, p: dict[str, Any]) -> dict[str, Any]:
        body = {"id": p["id"], "steps": p["steps"]}
        r = await client.post(f"/Program/{p['key']}/execute", body, ok=200, idempotency_key=p["id"])
        answer: dict[str, Any] = r.json()
        return answer

    async def run(self) -> None:
        async def program(client: Retrying, p: dict[str, Any]) -> None:
            self.answers[p["id"]] = await self.execute(client, p)

        await self.each(self.plan.programs, program, CLIENTS)

    async def nap(self, naps: dict[str, int]) -> None:
        """Start the workflows ``naps`` (id -> sleep in ms), one after the other."""

        async def start(client: Retrying, nap: tuple[str, int]) -> None:
            await client.post(f"/Nap/{nap[0]}/run/send", nap[1], ok=202)
            self.started.add(nap[0])

        await self.each(naps.items(), start, 1)

    async def changed(self, answered: dict[str, dict[str, Any]]) -> list[str]:
        """The programs of ``answered`` (id -> answer) that answer otherwise when sent again."""
        out: list[str] = []

        async def again(client: Retrying, p: dict[str, Any]) -> None:
            if await self.execute(client, p) != answered[p["id"]]:
                out.append(p["id"])

        await self.each([p for p in self.plan.programs if p["id"] in answered], again, CLIENTS)
        return out

    async def outputs(self, naps: Iterable[str]) -> dict[str, dict[str, Any]]:
        """Each workflow's output, once it finished."""
        out: dict[str, dict[str, Any]] = {}

        async def attach(client: Retrying, wid: str) -> None:
            r = await client.request("GET", f"/restate/workflow/Nap/{wid}/attach", ok=200)
            out[wid] = r.json()

        await self.each(naps, attach, CLIENTS)
        return out


@pytest.mark.parametrize("mode", ["whole-log", "snapshot-dir", "snapshot-s3"])
async def test_a_broker_that_loses_its_disk_finishes_from_the_kafka_log(  # noqa: PLR0915 - one scenario, in order
    kafka: Tansu,
    tmp_path: Path,
    rng: random.Random,
    figures: dict[str, Any],
    request: pytest.FixtureRequest,
    mode: str,
) -> None:
    run = f"{rng.getrandbits(32):08x}"
    flags = ["--log", f"kafka://{kafka.bootstrap}/log-{run}"]
    env: dict[str, str] = {}
    bucket = f"snaps-{run}"
    if mode == "snapshot-dir":
        flags += ["--snapshots", str(tmp_path / "snapshots")]
    elif mode == "snapshot-s3":
        s3 = request.getfixturevalue("s3")
        s3.create_bucket(bucket)
        env = s3.env()
        flags += ["--snapshots", f"s3://{bucket}/sluice", "--snapshot-endpoint", s3.endpoint]
    if mode != "whole-log":
        flags += ["--snapshot-every", "500"]  # (the broker looks every 5 s whether one is due)
    data = tmp_path / "data"
    broker = BrokerProcess(data, *flags)
    admin = f"http://127.0.0.1:{broker.admin}"

    plan = make_plan(rng, PROGRAMS, key_count=PROGRAM_KEYS)
    short, long = _naps(rng, run)
    naps = short | long
    model = Model()
    src, out = new_topic(kafka, PARTITIONS), new_topic(kafka, PARTITIONS)
    keys = [f"dl-{run}-{k}".encode() for k in range(RECORD_KEYS)]
    await asyncio.to_thread(produce, kafka, src, model.more(rng, RECORDS, keys))
    figures.update(
        mode=mode, programs=PROGRAMS, program_keys=PROGRAM_KEYS, records_in=RECORDS,
        record_keys=RECORD_KEYS, naps=NAPS, steps_by_kind=dict(plan.steps),
    )  # fmt: skip

    markers_path = tmp_path / "markers.txt"
    service = ServiceProcess(
        "tests.reliability.services_disk_loss", {"SLUICE_TEST_MARKERS": str(markers_path)}
    )
    load = Load(f"http://127.0.0.1:{broker.ingress}", plan)
    tasks: list[asyncio.Future[Any]] = []
    try:
        service.start()
        with LiveOutput(kafka, out) as live:
            async with (
                httpx.AsyncClient(timeout=30) as c,
                httpx.AsyncClient(base_url=load.base, timeout=30) as ingress,
            ):
                await asyncio.to_thread(broker.start, env)
                await set_up(
                    c, admin, service.uri, kafka,
                    src=src, output_topic=out, name="dl", max_in_flight="500",
                )  # fmt: skip
                resolver = Retrying(ingress)
                markers = Markers(markers_path, resolver, plan.deltas())
                load.clients.append(resolver)
                work = asyncio.ensure_future(load.run())
                tasks += [work, asyncio.ensure_future(markers.follow())]
                tasks.append(asyncio.ensure_future(load.nap(short)))

                def check_tasks() -> None:
                    for t in tasks:
                        if t.done():
                            t.result()  # a rejected request ends the test

                # Until enough of each kind of work is done, and (snapshots) one was taken;
                # then the long naps start, and the broker dies once they are (half) asleep.
                deadline, longs = time.monotonic() + 120, False
                while True:
                    check_tasks()
                    marks = _nap_marks(markers_path)
                    asleep = set(marks["slept"]) - set(marks["woke"])
                    log = await _health_log(c, admin)
                    if not longs and (
                        len(load.answers) >= PROGRAMS // 3
                        and len(live.records) >= RECORDS // 4
                        and set(short) <= set(marks["woke"])
                        and (mode == "whole-log" or log["snapshot"])
                    ):
                        tasks.append(asyncio.ensure_future(load.nap(long)))
                        longs = True
                    # (Each long nap sleeps 4 s or more: once all started, one is asleep.)
                    dozing = asleep & set(long)
                    if dozing and (set(long) <= load.started or len(dozing) >= len(long) // 2):
                        break
                    assert time.monotonic() < deadline, (
                        f"not ready to kill in 120 s: {len(load.answers)} programs answered, "
                        f"{len(live.records)} records out, {len(load.started)} naps started, "
                        f"{len(marks['woke'])} woke, {len(asleep)} asleep, log {log}\n"
                        + await _open(c, admin, broker.log)
                    )
                    await asyncio.sleep(0.2)
                assert broker.proc is not None
                rss = peak_rss_mb(broker.proc.pid)
                broker.kill()
                killed = time.monotonic()
                answered = dict(load.answers)
                marks = _nap_marks(markers_path)
                asleep = set(marks["slept"]) - set(marks["woke"])
                figures["at_kill"] = {
                    "programs_answered": len(answered),
                    "records_out": len(live.records),
                    "naps_asleep": len(asleep),
                    "naps_woke": len(marks["woke"]),
                    "log_high": log["high"],
                    "snapshot_lsn": log["snapshot"],
                }
                shutil.rmtree(data)

                await asyncio.to_thread(broker.start, env)
                figures["restart_s"] = round(time.monotonic() - killed, 2)
                deadline = time.monotonic() + STUCK_S
                while (await _health_log(c, admin))["applied"] < log["high"]:
                    assert time.monotonic() < deadline, "the log was not replayed in 60 s"
                    await asyncio.sleep(0.1)
                figures["caught_up_s"] = round(time.monotonic() - killed, 2)

                # Until every program is answered and every record is out (none stuck).
                last, seen = time.monotonic(), (0, 0)
                while not (work.done() and len(live.records) >= RECORDS):
                    check_tasks()
                    now = (len(load.answers), len(live.records))
                    if now != seen:
                        last, seen = time.monotonic(), now
                    if time.monotonic() - last > STUCK_S:
                        pytest.fail(
                            f"stuck: nothing done for {STUCK_S:.0f}s, {now[0]}/{PROGRAMS} "
                            f"programs, {now[1]}/{RECORDS} records\n"
                            + await diagnose(c, admin, broker.log, live)
                            + "\n"
                            + await _open(c, admin, broker.log)
                        )
                    await asyncio.sleep(0.2)
                work.result()

                try:  # Those answered before the disk was lost answer the same again.
                    changed = await asyncio.wait_for(load.changed(answered), 2 * STUCK_S)
                    outs = await asyncio.wait_for(load.outputs(naps), 2 * STUCK_S)
                except TimeoutError:
                    pytest.fail(
                        f"programs asked again or workflows not answered in {2 * STUCK_S:.0f}s\n"
                        + await _open(c, admin, broker.log)
                    )
                figures["recovery_s"] = round(time.monotonic() - killed, 2)

                # Delayed sends may still be due.
                deadline = time.monotonic() + 60
                while True:
                    lost, duplicated, wrong = off_by(plan, await _totals(c, admin))
                    if not wrong or time.monotonic() > deadline:
                        break
                    await asyncio.sleep(0.5)
                invocations = await _query(
                    c, admin,
                    "SELECT target_service_key FROM sys_invocation "
                    "WHERE target_service_name = 'Nap'",
                )  # fmt: skip
                log = await _health_log(c, admin)
                assert broker.proc is not None
                rss = max(rss, peak_rss_mb(broker.proc.pid))
            got = await asyncio.to_thread(read_output, kafka, out, RECORDS, 60)
    finally:
        for t in tasks:
            t.cancel()
        stderr = broker.stop()
        service.stop()

    markers.poll()
    before, run_problems = check_runs(plan, load.answers, markers.runs)
    marks = _nap_marks(markers_path)
    per_key = Counter(r["target_service_key"] for r in invocations)
    early, dup = [], []
    for wid, ms in naps.items():
        o = outs[wid]
        assert o["ms"] == ms, f"{wid}: answered {o}"
        if o["at"] < o["start"] + ms / 1000 - GRANULARITY_S:
            early.append(f"{wid}: woke {o['start'] + ms / 1000 - o['at']:.3f}s early")
        tokens = [token for token, _ in marks["woke"][wid]]
        if o["token"] not in tokens or tokens[-1] != o["token"] or per_key[wid] != 1:
            dup.append(f"{wid}: {per_key[wid]} invocations, woke {tokens}, journaled {o}")
    figures.update(score(got, model))
    figures.update(
        programs_lost_updates=lost,
        programs_duplicated_updates=duplicated,
        program_keys_wrong=len(wrong),
        programs_answered_differently=len(changed),
        runs_reexecuted_before_journaled=before,
        runs_reexecuted_after_journaled=len(run_problems),
        naps_early=len(early),
        naps_woke_twice=len(dup),
        # (to where the dead broker had been: from its last look at the log's end)
        records_replayed=figures["at_kill"]["log_high"] - (figures["at_kill"]["snapshot_lsn"] or 0),
        client_retries=load.retries,
        peak_rss_mb=rss,
    )
    restored = "restored the tables from the snapshot" in stderr
    assert restored == (mode != "whole-log"), stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    assert json.loads((data / "sluice.json").read_text())["log"].startswith("kafka://")
    assert (log["kind"], log["start"]) == ("kafka", 1), log
    if mode == "snapshot-s3":
        assert s3.keys(bucket, "sluice"), f"no snapshot in the bucket {bucket}"
    assert not wrong, f"{len(wrong)} program keys differ from the model:\n" + "\n".join(wrong[:30])
    assert not changed, f"answered differently after the disk loss: {changed[:30]}"
    assert not run_problems, "\n".join(run_problems[:30])
    check_exactly_once(got, model.keys)
    assert figures["wrong_sums"] == 0, "a key's count or running sum differs from the model"
    assert figures["at_kill"]["naps_asleep"] > 0, "no workflow was asleep when the broker died"
    assert not early, "\n".join(early[:30])
    assert not dup, "\n".join(dup[:30])
    assert len(per_key) == NAPS, per_key
