"""Test 8: handler faults. Deployments whose handler process is SIGKILLed mid-invocation,
hangs past the inactivity timeout, answers with bytes that are no service-protocol frames (or
a frame header around a body that does not decode), or labels its answer with a protocol
version it never advertised.

Each faulty invocation must be retried with backoff, then paused after the last attempt of
the broker's (short, configured by CLI flags) retry policy, with the fault named in the admin
API's JSON. Meanwhile a healthy service on the same broker, and other keys of the faulty
objects, keep completing with their usual latency; nothing is left stuck. The killed handler
comes back, its paused invocations are resumed and complete without re-running their
journaled step.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import statistics
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from sluice.testing import HandlerProcess, SluiceBroker
from tests.broker.conftest import ROOT

from .conftest import sized

MAX_ATTEMPTS = 5
BACKOFF_MS = [100, 200, 400, 800]  # before attempts 2..5: initial 100 ms, factor 2, cap 800 ms
RETRY_FLAGS = [
    "--retry-initial-interval-ms", "100", "--retry-factor", "2",
    "--retry-max-interval-ms", "800", "--retry-max-attempts", str(MAX_ATTEMPTS),
    "--inactivity-timeout", "1", "--abort-timeout", "1",
]  # fmt: skip
ROUNDS = sized(1, 5)
PER_KIND = sized(3, 20)  # faulty invocations per fault kind and round
BASELINE_S = sized(3.0, 8.0)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(sized(180, 600))]


@dataclass(frozen=True)
class Kind:
    """One fault: the object and key prefix that trigger it, and what the admin API must say."""

    name: str
    obj: str
    prefix: str
    reason: str  # a substring of last_failure


KINDS = [
    Kind("kill", "Killable", "kill-", "cannot reach the deployment"),
    Kind("hang-sdk-h2", "Hanging", "hang-", "inactivity timeout"),
    Kind("hang-h2", "RawH2", "hang-", "inactivity timeout"),
    Kind("hang-h1", "RawH1", "hang-", "inactivity timeout"),
    Kind("garbage-h2", "RawH2", "garbage-", "malformed frame"),
    Kind("garbage-h1", "RawH1", "garbage-", "malformed frame"),
    Kind("undecodable-h2", "RawH2", "undecodable-", "malformed frame"),
    Kind("undecodable-h1", "RawH1", "undecodable-", "malformed frame"),
    Kind("version-h2", "RawH2", "version-", "unsupported protocol version"),
    Kind("version-h1", "RawH1", "version-", "unsupported protocol version"),
]
HANDLER = {"Killable": "work", "Hanging": "work", "RawH2": "act", "RawH1": "act"}
HEALTHY = ["Echo", "Hanging", "RawH2", "RawH1"]  # targets of the healthy load


@dataclass
class Fault:
    kind: Kind
    key: str
    payload: str
    id: str = ""
    sent_at: float = 0.0
    paused_after: float | None = None
    final: dict[str, Any] = field(default_factory=dict)


@dataclass
class Load:
    """Healthy calls: latencies per phase, and anything that went wrong."""

    phase: str = "baseline"
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    errors: list[str] = field(default_factory=list)
    running: bool = True


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def attempt_times(path: Path) -> dict[str, list[float]]:
    """Per key, the wall-clock times at which an endpoint saw an attempt."""
    out: dict[str, list[float]] = defaultdict(list)
    if path.exists():
        for line in path.read_text().splitlines():
            word, key, at = line.split(" ")
            if word == "attempt":
                out[key].append(float(at))
    return out


async def healthy_worker(
    c: httpx.AsyncClient, base: str, load: Load, rng: random.Random, worker: int
) -> None:
    n = 0
    while load.running:
        target = HEALTHY[n % len(HEALTHY)]
        n += 1
        payload = f"h{worker}-{n}-{rng.getrandbits(48):012x}"
        url = (
            f"{base}/Echo/echo_text"
            if target == "Echo"
            else f"{base}/{target}/ok-{worker}-{n % 5}/{HANDLER[target]}"
        )
        phase = load.phase
        t0 = time.monotonic()
        try:
            r = await c.post(url, json=payload)
        except httpx.HTTPError as e:
            load.errors.append(f"{url}: {e!r}")
            continue
        took = time.monotonic() - t0
        if r.status_code != 200 or r.json() != payload:
            load.errors.append(f"{url}: {r.status_code} {r.text[:200]}")
            continue
        load.latencies[phase].append(took)


async def wait_all_paused(
    admin: httpx.AsyncClient, faults: list[Fault], within: float, reasons: dict[str, Counter[str]]
) -> None:
    """Poll the admin API until every fault is paused; count the reasons seen on the way.
    A fault that completes instead (the broker accepted what it should have refused) fails.
    One GET per pending invocation: listing them all would scan the whole table each time."""
    deadline = time.monotonic() + within
    pending = {f.id: f for f in faults}
    gate = asyncio.Semaphore(16)

    async def poll(f: Fault) -> None:
        async with gate:
            r = await admin.get(f"/invocations/{f.id}")
        assert r.status_code == 200, r.text
        inv = f.final = r.json()
        if inv["last_failure"]:
            reasons[f.kind.name][inv["last_failure"].split(":")[0]] += 1
        assert inv["status"] != "completed", (f.kind.name, inv)
        if inv["status"] == "paused":
            f.paused_after = time.monotonic() - f.sent_at
            del pending[f.id]

    while pending and time.monotonic() < deadline:
        await asyncio.sleep(0.25)
        await asyncio.gather(*(poll(f) for f in list(pending.values())))
    assert not pending, [(f.kind.name, f.final) for f in pending.values()]


def check_paused(f: Fault, attempts_at: list[float]) -> None:
    """Paused after exactly the configured attempts, with the fault named in the admin JSON;
    every attempt reached the endpoint (unless its process was down), spaced by the backoff."""
    inv = f.final
    assert inv["status"] == "paused", (f.kind.name, inv)
    assert inv["retry_count"] == MAX_ATTEMPTS, (f.kind.name, inv)
    assert f.kind.reason in inv["last_failure"], (f.kind.name, inv["last_failure"])
    if f.kind.name == "kill":
        return
    assert len(attempts_at) == MAX_ATTEMPTS, (f.kind.name, f.key, attempts_at)
    gaps = [b - a for a, b in itertools.pairwise(attempts_at)]
    for gap, backoff in zip(gaps, BACKOFF_MS, strict=True):
        assert gap >= backoff / 1000 * 0.9, (f.kind.name, gaps)


def fault_figures(
    faults: list[Fault], seen: dict[str, list[float]], reasons: dict[str, Counter[str]]
) -> dict[str, Any]:
    by_kind: dict[str, list[Fault]] = defaultdict(list)
    for f in faults:
        by_kind[f.kind.name].append(f)
    out: dict[str, Any] = {}
    for name, fs in by_kind.items():
        paused = [f.paused_after for f in fs if f.paused_after is not None]
        out[name] = {
            "faults": len(fs),
            "attempts_broker": dict(Counter(f.final.get("retry_count") for f in fs)),
            "attempts_seen_by_endpoint": dict(Counter(len(seen[f.key]) for f in fs)),
            "time_to_pause_s": {"min": round(min(paused), 2), "max": round(max(paused), 2)}
            if paused
            else None,
            "last_failure": (fs[0].final.get("last_failure") or "")[:160],
            "reasons_seen": dict(reasons[name]),
        }
    return out


def latency_figures(lat: list[float]) -> dict[str, Any]:
    return {
        "completed": len(lat),
        "p50_ms": round(pct(lat, 0.5) * 1000, 1) if lat else None,
        "p99_ms": round(pct(lat, 0.99) * 1000, 1) if lat else None,
    }


def check_healthy(load: Load) -> None:
    """The healthy calls: all answered, correctly, at their usual pace during the faults."""
    assert not load.errors, load.errors[:10]
    base_lat, fault_lat = load.latencies["baseline"], load.latencies["faults"]
    assert len(base_lat) >= 20 and len(fault_lat) >= 50, (len(base_lat), len(fault_lat))
    assert statistics.median(fault_lat) <= 3 * statistics.median(base_lat) + 0.05
    assert pct(fault_lat, 0.99) <= max(1.0, 5 * pct(base_lat, 0.99))


def handler_processes(markers: Path, seed: int) -> dict[str, HandlerProcess]:
    """One process per deployment, by the object (or service) it serves; all log attempts
    to ``markers``."""
    env = {"SLUICE_FAULT_MARKERS": str(markers), "FAULTY_LOG": str(markers)}
    env["FAULTY_SEED"] = str(seed)
    raw = "tests.reliability.misbehaving:app"
    return {
        "Echo": HandlerProcess("tests.reliability.services:app", cwd=ROOT),
        "Killable": HandlerProcess("tests.reliability.fault_services:kill_app", env=env, cwd=ROOT),
        "Hanging": HandlerProcess("tests.reliability.fault_services:hang_app", env=env, cwd=ROOT),
        "RawH2": HandlerProcess(raw, env={**env, "FAULTY_OBJECT": "RawH2"}, cwd=ROOT),
        "RawH1": HandlerProcess(raw, env={**env, "FAULTY_OBJECT": "RawH1"}, cwd=ROOT),
    }


async def end_states(
    admin: httpx.AsyncClient, c: httpx.AsyncClient, base: str, figures: dict[str, Any]
) -> None:
    """Every invocation the broker knows must end completed or paused: nothing stuck. Listing
    them all reads the whole table; the ingress must keep answering meanwhile."""
    listing = asyncio.ensure_future(admin.get("/invocations", params={"limit": "1000000"}))
    t0 = time.monotonic()
    probes: list[float] = []
    while not listing.done():
        t1 = time.monotonic()
        assert (await c.get(f"{base}/restate/health")).status_code == 200
        probes.append(time.monotonic() - t1)
    r = await listing
    figures["admin_list_all_ms"] = round((time.monotonic() - t0) * 1000, 1)
    figures["ingress_probe_max_ms_during_list"] = round(max(probes) * 1000, 1)
    assert max(probes) < 0.5, figures["ingress_probe_max_ms_during_list"]
    states = Counter(inv["status"] for inv in r.json()["invocations"])
    figures["invocation_states_at_end"] = dict(states)
    figures["stuck"] = sum(n for s, n in states.items() if s not in ("completed", "paused"))


async def test_handler_faults(
    tmp_path: Path, rng: random.Random, seed: int, figures: dict[str, Any]
) -> None:
    markers = tmp_path / "attempts.txt"
    broker = SluiceBroker(work_dir=tmp_path / "broker", extra_args=RETRY_FLAGS)
    procs = handler_processes(markers, seed)
    load = Load()
    faults: list[Fault] = []
    reasons: dict[str, Counter[str]] = defaultdict(Counter)
    try:
        broker.start()
        for proc in procs.values():
            proc.start()
        limits = httpx.Limits(max_connections=400)
        async with (
            httpx.AsyncClient(base_url=broker.admin_url, timeout=30) as admin,
            httpx.AsyncClient(timeout=60, limits=limits) as c,
        ):
            for name, proc in procs.items():
                body = {"uri": proc.url, "use_http_11": name == "RawH1"}
                r = await admin.post("/deployments", json=body)
                assert r.status_code == 201, (name, r.text)
            base = broker.ingress_url
            workers = [
                asyncio.ensure_future(healthy_worker(c, base, load, rng, w)) for w in range(4)
            ]
            try:
                await asyncio.sleep(BASELINE_S)
                load.phase = "faults"
                t_faults = time.monotonic()
                for rnd in range(ROUNDS):
                    faults += await fault_round(
                        c, admin, base=base, procs=procs, rng=rng, rnd=rnd, reasons=reasons
                    )
                figures["fault_window_s"] = round(time.monotonic() - t_faults, 1)
                load.phase = "after"
                await asyncio.sleep(1.0)
            finally:
                load.running = False
                await asyncio.gather(*workers)

            await end_states(admin, c, base, figures)
    finally:
        load.running = False
        for proc in procs.values():
            proc.close()
        broker.close()
        log = broker.log_path.read_text(errors="replace") if broker.log_path.exists() else ""

    seen = attempt_times(markers)
    figures["retry_policy"] = {"max_attempts": MAX_ATTEMPTS, "backoff_ms": BACKOFF_MS}
    figures["faults_injected"] = len(faults)
    figures["faults"] = fault_figures(faults, seen, reasons)
    for phase in ("baseline", "faults", "after"):
        figures[f"healthy_{phase}"] = latency_figures(load.latencies[phase])
    figures["healthy_errors"] = load.errors[:10]

    for f in faults:
        check_paused(f, seen[f.key])
    check_healthy(load)
    assert figures["stuck"] == 0, figures["invocation_states_at_end"]
    assert "Traceback" not in log, log[-3000:]


async def fault_round(
    c: httpx.AsyncClient,
    admin: httpx.AsyncClient,
    *,
    base: str,
    procs: dict[str, HandlerProcess],
    rng: random.Random,
    rnd: int,
    reasons: dict[str, Counter[str]],
) -> list[Fault]:
    """Inject PER_KIND faults of every kind at once; SIGKILL the Killable process while its
    invocations are in the handler; wait until all are paused; then bring Killable back,
    resume its invocations and check that they complete, their journaled step run once."""
    markers = Path(procs["Killable"].env["SLUICE_FAULT_MARKERS"])
    healed = Path(f"{markers}.healed")
    await asyncio.to_thread(healed.unlink, missing_ok=True)
    faults = [
        Fault(k, f"{k.prefix}{rnd}-{i}-{rng.getrandbits(32):08x}", f"{k.name}-{rnd}-{i}")
        for k in KINDS
        for i in range(PER_KIND)
    ]
    rng.shuffle(faults)

    async def send(f: Fault) -> None:
        url = f"{base}/{f.kind.obj}/{f.key}/{HANDLER[f.kind.obj]}/send"
        f.sent_at = time.monotonic()
        r = await c.post(url, json=f.payload)
        assert r.status_code == 202, r.text
        f.id = r.json()["invocationId"]

    await asyncio.gather(*(send(f) for f in faults))
    kills = [f for f in faults if f.kind.name == "kill"]
    # SIGKILL once every kill- invocation is inside the handler (its attempt is marked).
    deadline = time.monotonic() + 30
    while not all(attempt_times(markers)[f.key] for f in kills):
        assert time.monotonic() < deadline, "the Killable invocations never reached the handler"
        await asyncio.sleep(0.05)
    procs["Killable"].kill()
    await wait_all_paused(admin, faults, 120, reasons)

    await asyncio.to_thread(healed.touch)
    await asyncio.to_thread(procs["Killable"].start)
    for f in kills:
        r = await admin.patch(f"/invocations/{f.id}/resume")
        assert r.status_code == 202, r.text
    for f in kills:
        r = await c.get(f"{base}/restate/invocation/{f.id}/attach")
        assert r.status_code == 200 and r.json() == f.payload, r.text
    text = await asyncio.to_thread(markers.read_text)
    runs = Counter(line.split(" ")[1] for line in text.splitlines() if line.startswith("run "))
    assert all(runs[f.key] == 1 for f in kills), {f.key: runs[f.key] for f in kills}
    return faults
