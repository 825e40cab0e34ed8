"""Sluice SDK vs the official restate-sdk: CPU per journal entry and 1,000-entry replay time.

    .venv/bin/python -m bench.sdk_bench [--rounds 7] [--entries 1000] [--profile]

Both SDKs are ASGI apps speaking the Restate service protocol v6. Each is driven in-process
(no sockets, no broker) with the same hand-built journals and equivalent handlers, so the
figures are the SDK's own cost: framing, protobuf, the journal state machine, the context
API and the handler's coroutine, all on one thread.

Scenarios (one virtual-object handler each, the same on both sides):

- replay: a 1,000-entry journal (Input, 499 x [RunCommand, RunCompletionNotification],
  SetStateCommand) is replayed to Output + End over HTTP/1.1 request/response. Reported:
  wall and CPU time per replay. No step function runs (the bench checks it). A second
  row passes an explicit JSON serde to each step: without one, restate-sdk's `run_typed`
  inspects the step's signature on every call, which is most of its replay cost.
- set: a fresh invocation (journal = Input) whose handler issues N `ctx.set` writes.
  Reported: the marginal CPU per new journal entry, (cpu(N) - cpu(0)) / N, with
  time.process_time, and the fixed cost of an empty invocation.
- run: a fresh invocation over HTTP/2 (bidirectional) whose handler runs N steps; a fake
  broker answers each ProposeRunCompletion with a RunCompletionNotification. Reported: the
  marginal CPU per step (RunCommand + proposal + notification), fake broker included on
  both sides (a few microseconds of header parsing).

Every invocation's output frames are decoded with `sluice.protocol` and checked, so a failing
handler cannot pass as a fast one. Rounds alternate which SDK goes first; the table gives
medians over the rounds and the ratio Sluice / restate-sdk. JSON goes to
bench/results/sdk.json.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import json
import logging
import platform
import pstats
import statistics
import struct
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import restate
from restate.serde import JsonSerde

import sluice
from sluice import protocol as p

RESULTS = Path(__file__).resolve().parent / "results" / "sluice.json"
SERVICE = "Bench"
KEY = "bench"
INVOCATION_ID = b"\x00" * 8 + b"0123456789abcdef"

AsgiApp = Callable[[dict[str, Any], Any, Any], Awaitable[None]]

# Counts step-function executions: a replay must not run any.
_step_calls = 0


async def _step_async(i: int) -> int:
    global _step_calls  # noqa: PLW0603 - a benchmark-local counter
    _step_calls += 1
    return i


def _step_sync(i: int) -> int:
    global _step_calls  # noqa: PLW0603
    _step_calls += 1
    return i


# The step function both SDKs run. Async by default: restate-sdk runs a sync step in the
# default thread pool (`run_in_executor`), a thread hop per step that Sluice does not make;
# `--sync-steps` measures that path instead.
_step: Callable[[int], Any] = _step_async


# --- the handlers, written once per SDK ----------------------------------------------------

sluice_obj = sluice.VirtualObject(SERVICE)


@sluice_obj.handler(name="replay")
async def sluice_replay(ctx: sluice.ObjectContext, n: int) -> int:
    total = 0
    for i in range(1, n + 1):
        total += await ctx.run("step", _step, i)
    ctx.set("done", total)
    return total


_SLUICE_JSON: sluice.JsonSerde[int] = sluice.JsonSerde()


@sluice_obj.handler(name="replay_serde")
async def sluice_replay_serde(ctx: sluice.ObjectContext, n: int) -> int:
    total = 0
    for i in range(1, n + 1):
        total += await ctx.run("step", _step, i, serde=_SLUICE_JSON)
    ctx.set("done", total)
    return total


@sluice_obj.handler(name="sets")
async def sluice_sets(ctx: sluice.ObjectContext, n: int) -> int:
    for i in range(n):
        ctx.set(f"k{i}", i)
    return n


@sluice_obj.handler(name="runs")
async def sluice_runs(ctx: sluice.ObjectContext, n: int) -> int:
    total = 0
    for i in range(1, n + 1):
        total += await ctx.run("step", _step, i)
    return total


restate_obj = restate.VirtualObject(SERVICE)


@restate_obj.handler(name="replay")
async def restate_replay(ctx: restate.ObjectContext, n: int) -> int:
    total = 0
    for i in range(1, n + 1):
        total += await ctx.run_typed("step", _step, restate.RunOptions(), i)
    ctx.set("done", total)
    return total


# An explicit serde spares restate-sdk an `inspect.signature` of the step on every call.
_RESTATE_JSON_OPTIONS: restate.RunOptions[int] = restate.RunOptions(serde=JsonSerde[int]())


@restate_obj.handler(name="replay_serde")
async def restate_replay_serde(ctx: restate.ObjectContext, n: int) -> int:
    total = 0
    for i in range(1, n + 1):
        total += await ctx.run_typed("step", _step, _RESTATE_JSON_OPTIONS, i)
    ctx.set("done", total)
    return total


@restate_obj.handler(name="sets")
async def restate_sets(ctx: restate.ObjectContext, n: int) -> int:
    for i in range(n):
        ctx.set(f"k{i}", i)
    return n


@restate_obj.handler(name="runs")
async def restate_runs(ctx: restate.ObjectContext, n: int) -> int:
    total = 0
    for i in range(1, n + 1):
        total += await ctx.run_typed("step", _step, restate.RunOptions(), i)
    return total


APPS: dict[str, AsgiApp] = {
    "sluice": sluice.app(sluice_obj, always_replay=False),
    "restate-sdk": restate.app(services=[restate_obj]),
}


# --- driving an ASGI app in-process --------------------------------------------------------


def _request_body(entries: list[p.Message]) -> bytes:
    start = p.StartMessage(
        id=INVOCATION_ID,
        debug_id="inv_bench",
        known_entries=len(entries),
        key=KEY,
        random_seed=42,
    )
    return p.encode(start) + b"".join(p.encode(e) for e in entries)


def _scope(handler: str, *, http2: bool) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "method": "POST",
        "scheme": "http",
        "path": f"/invoke/{SERVICE}/{handler}",
        "raw_path": f"/invoke/{SERVICE}/{handler}".encode(),
        "query_string": b"",
        "http_version": "2" if http2 else "1.1",
        "headers": [(b"content-type", p.content_type(6).encode())],
    }


def _check_head(sent: list[dict[str, Any]]) -> bytes:
    if not sent or sent[0]["type"] != "http.response.start" or sent[0]["status"] != 200:
        raise AssertionError(f"bad response head: {sent[:1]}")
    return b"".join(m.get("body", b"") for m in sent[1:])


async def request_response(app: AsgiApp, handler: str, body: bytes) -> bytes:
    """One HTTP/1.1 attempt: the whole journal in, the whole answer out."""
    sent: list[dict[str, Any]] = []
    delivered = False

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(_scope(handler, http2=False), receive, send)
    return _check_head(sent)


_HEADER = struct.Struct(">HHI")
_PROPOSE_RUN = 0x0005
_ENDINGS = (0x0001, 0x0002, 0x0003)  # suspension, error, end


async def bidi(app: AsgiApp, handler: str, body: bytes) -> bytes:
    """One HTTP/2 attempt with a fake broker that completes every proposed run step.

    The fake broker parses frame headers, decodes each proposal with `sluice.protocol` and
    answers with a RunCompletionNotification carrying the proposed value; it closes the
    request side on End/Suspension/Error, as restate-server does. Its cost (a few
    microseconds per step) is the same for both SDKs.
    """
    sent: list[dict[str, Any]] = []
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    inbox.put_nowait({"type": "http.request", "body": body, "more_body": True})
    pending = bytearray()
    finished = False

    async def receive() -> dict[str, Any]:
        return await inbox.get()

    async def send(message: dict[str, Any]) -> None:
        nonlocal finished
        sent.append(message)
        if message["type"] != "http.response.body":
            return
        pending.extend(message.get("body", b""))
        pos = 0
        while len(pending) - pos >= p.HEADER_SIZE:
            code, _flags, length = _HEADER.unpack_from(pending, pos)
            if len(pending) - pos - p.HEADER_SIZE < length:
                break
            if code in _ENDINGS and not finished:
                # Like restate-server: once the attempt ends, close the request side.
                finished = True
                inbox.put_nowait({"type": "http.request", "body": b"", "more_body": False})
                inbox.put_nowait({"type": "http.disconnect"})
            elif code == _PROPOSE_RUN:
                frame = memoryview(pending)[pos + p.HEADER_SIZE : pos + p.HEADER_SIZE + length]
                note = _run_notification(bytes(frame))
                frame.release()
                inbox.put_nowait({"type": "http.request", "body": note, "more_body": True})
            pos += p.HEADER_SIZE + length
        del pending[:pos]

    await app(_scope(handler, http2=True), receive, send)
    return _check_head(sent)


def _run_notification(proposal: bytes) -> bytes:
    # The proposal carries raw value bytes; the notification wraps them in a Value message.
    msg = p.ProposeRunCompletionMessage.decode(proposal)
    if msg.value is None:
        raise AssertionError(f"run {msg.result_completion_id} proposed a failure: {msg.failure}")
    return p.encode(
        p.RunCompletionNotification(completion_id=msg.result_completion_id, value=msg.value)
    )


# --- journals and the answers they must produce -------------------------------------------


def _json(value: Any) -> bytes:
    return json.dumps(value).encode()


@dataclass
class Scenario:
    name: str
    handler: str
    body: bytes
    entries: int  # journal entries in (replay) or commands out (processing)
    check: Callable[[list[p.Message]], None]
    transport: Callable[[AsgiApp, str, bytes], Awaitable[bytes]]


def replay_scenario(entries: int, *, handler: str = "replay") -> Scenario:
    if entries % 2 or entries < 4:
        raise SystemExit("--entries must be even and >= 4")
    steps = (entries - 2) // 2
    total = steps * (steps + 1) // 2
    journal: list[p.Message] = [p.InputCommand(value=_json(steps))]
    for cid in range(1, steps + 1):
        journal.append(p.RunCommand(result_completion_id=cid, name="step"))
        journal.append(p.RunCompletionNotification(completion_id=cid, value=_json(cid)))
    journal.append(p.SetStateCommand(key=b"done", value=_json(total)))
    assert len(journal) == entries

    def check(out: list[p.Message]) -> None:
        _expect(out, [p.OutputCommand(value=_json(total)), p.EndMessage()])

    body = _request_body(journal)
    return Scenario(handler, handler, body, entries, check, request_response)


def sets_scenario(n: int) -> Scenario:
    def check(out: list[p.Message]) -> None:
        want: list[p.Message] = [
            p.SetStateCommand(key=f"k{i}".encode(), value=_json(i)) for i in range(n)
        ]
        _expect(out, [*want, p.OutputCommand(value=_json(n)), p.EndMessage()])

    body = _request_body([p.InputCommand(value=_json(n))])
    return Scenario(f"set x{n}", "sets", body, n, check, request_response)


def runs_scenario(n: int) -> Scenario:
    def check(out: list[p.Message]) -> None:
        want: list[p.Message] = []
        for cid in range(1, n + 1):
            want.append(p.RunCommand(result_completion_id=cid, name="step"))
            want.append(p.ProposeRunCompletionMessage(result_completion_id=cid, value=_json(cid)))
        _expect(out, [*want, p.OutputCommand(value=_json(n * (n + 1) // 2)), p.EndMessage()])

    body = _request_body([p.InputCommand(value=_json(n))])
    return Scenario(f"run x{n}", "runs", body, n, check, bidi)


def _normalize(msg: p.Message) -> p.Message:
    # JSON spacing may differ between the SDKs (`{"a": 1}` vs `{"a":1}`): compare decoded
    # values, not bytes.
    raw = getattr(msg, "value", None)
    if isinstance(raw, bytes) and raw:
        msg.value = json.dumps(json.loads(raw)).encode()  # type: ignore[attr-defined]
    return msg


def _expect(out: list[p.Message], want: list[p.Message]) -> None:
    got = [_normalize(m) for m in out]
    if got != want:
        for i, (a, b) in enumerate(zip(got, want, strict=False)):
            if a != b:
                raise AssertionError(
                    f"frame {i}: got {a!r}, want {b!r} ({len(got)} vs {len(want)} frames)"
                )
        raise AssertionError(f"got {len(got)} frames, want {len(want)}: tail {got[-3:]!r}")


async def run_once(sdk_name: str, sc: Scenario, *, verify: bool) -> tuple[float, float]:
    """One invocation; returns (wall seconds, CPU seconds)."""
    app = APPS[sdk_name]
    calls_before = _step_calls
    w0, c0 = time.perf_counter(), time.process_time()
    out = await sc.transport(app, sc.handler, sc.body)
    w1, c1 = time.perf_counter(), time.process_time()
    if verify:
        frames = p.decode_all(out)
        try:
            sc.check([f.message for f in frames])  # type: ignore[misc]
        except AssertionError as exc:
            raise AssertionError(f"{sdk_name} {sc.name}: {exc}") from None
        if sc.handler.startswith("replay") and _step_calls != calls_before:
            raise AssertionError(f"{sdk_name} replay ran {_step_calls - calls_before} steps")
    return w1 - w0, c1 - c0


async def measure(sdk_name: str, sc: Scenario, repeat: int) -> tuple[float, float]:
    """Mean (wall, CPU) seconds per invocation over `repeat` invocations (first one verified)."""
    gc.collect()
    wall = cpu = 0.0
    for i in range(repeat):
        w, c = await run_once(sdk_name, sc, verify=i == 0)
        wall += w
        cpu += c
    return wall / repeat, cpu / repeat


# --- the benchmark ---------------------------------------------------------------------------


@dataclass
class Figure:
    metric: str
    unit: str
    samples: dict[str, list[float]]

    def median(self, sdk_name: str) -> float:
        return statistics.median(self.samples[sdk_name])


async def bench(rounds: int, entries: int, repeat: int) -> list[Figure]:
    replay = replay_scenario(entries)
    replay_serde = replay_scenario(entries, handler="replay_serde")
    sets_n, sets_0 = sets_scenario(entries), sets_scenario(0)
    runs_n, runs_0 = runs_scenario(entries), runs_scenario(0)
    names = list(APPS)
    for sdk_name in names:  # warm-up, and every scenario verified once per SDK
        for sc in (replay, replay_serde, sets_n, sets_0, runs_n, runs_0):
            await measure(sdk_name, sc, 3)

    figures = {
        "replay": Figure(f"replay of a {entries}-entry journal", "ms", {n: [] for n in names}),
        "replay_entry": Figure("  replay, per journal entry", "us", {n: [] for n in names}),
        "replay_cpu": Figure("  replay, CPU time", "ms", {n: [] for n in names}),
        "replay_serde": Figure(
            "  replay, run steps given a JsonSerde", "ms", {n: [] for n in names}
        ),
        "set": Figure("CPU per new entry: ctx.set", "us", {n: [] for n in names}),
        "run": Figure("CPU per new entry: ctx.run (acked)", "us", {n: [] for n in names}),
        "empty": Figure("CPU of an empty invocation", "us", {n: [] for n in names}),
    }
    for r in range(rounds):
        order = names if r % 2 == 0 else names[::-1]
        for sdk_name in order:
            wall, cpu = await measure(sdk_name, replay, repeat)
            figures["replay"].samples[sdk_name].append(wall * 1e3)
            figures["replay_entry"].samples[sdk_name].append(wall / entries * 1e6)
            figures["replay_cpu"].samples[sdk_name].append(cpu * 1e3)
            wall, _ = await measure(sdk_name, replay_serde, repeat)
            figures["replay_serde"].samples[sdk_name].append(wall * 1e3)
            _, cpu_n = await measure(sdk_name, sets_n, repeat)
            _, cpu_0 = await measure(sdk_name, sets_0, repeat * 10)
            figures["set"].samples[sdk_name].append((cpu_n - cpu_0) / entries * 1e6)
            figures["empty"].samples[sdk_name].append(cpu_0 * 1e6)
            _, run_n = await measure(sdk_name, runs_n, repeat)
            _, run_0 = await measure(sdk_name, runs_0, repeat * 10)
            figures["run"].samples[sdk_name].append((run_n - run_0) / entries * 1e6)
        print(f"  round {r + 1}/{rounds} done", file=sys.stderr)
    return list(figures.values())


def report(figures: list[Figure], args: argparse.Namespace, command: str) -> dict[str, Any]:
    rows = []
    header = f"{'metric':<40} {'sluice':>12} {'restate-sdk':>12} {'sluice/restate':>15}"
    print()
    print(header)
    print("-" * len(header))
    for fig in figures:
        ours, theirs = fig.median("sluice"), fig.median("restate-sdk")
        ratio = ours / theirs if theirs else float("nan")
        unit = f"{fig.unit:<2}"
        print(f"{fig.metric:<40} {ours:>9.2f} {unit} {theirs:>9.2f} {unit} {ratio:>14.2f}x")
        rows.append(
            {
                "metric": fig.metric.strip(),
                "unit": fig.unit,
                "sluice_median": ours,
                "restate_sdk_median": theirs,
                "ratio_sluice_over_restate": ratio,
                "samples": fig.samples,
            }
        )
    print()
    print(
        f"medians of {args.rounds} rounds x {args.repeat} invocations (after warm-up), "
        f"{'sync' if args.sync_steps else 'async'} step functions, "
        f"python {platform.python_version()}, restate-sdk {_restate_version()}"
    )
    return {
        "command": command,
        "rounds": args.rounds,
        "repeat": args.repeat,
        "entries": args.entries,
        "step_functions": "sync" if args.sync_steps else "async",
        "python": platform.python_version(),
        "platform": platform.platform(),
        "restate_sdk": _restate_version(),
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "figures": rows,
    }


def _restate_version() -> str:
    return version("restate-sdk")


async def profile(entries: int) -> None:
    """cProfile of the Sluice side only, one table per scenario."""
    for sc in (replay_scenario(entries), sets_scenario(entries), runs_scenario(entries)):
        await measure("sluice", sc, 3)
        prof = cProfile.Profile()
        prof.enable()
        await measure("sluice", sc, 20)
        prof.disable()
        print(f"\n=== sluice, {sc.name} (20 invocations) ===")
        pstats.Stats(prof).sort_stats("tottime").print_stats(15)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--repeat", type=int, default=20, help="invocations per measurement")
    parser.add_argument("--entries", type=int, default=1000)
    parser.add_argument(
        "--sync-steps", action="store_true", help="plain def step functions (default: async def)"
    )
    parser.add_argument("--profile", action="store_true", help="cProfile the Sluice side instead")
    args = parser.parse_args()
    global _step  # noqa: PLW0603
    _step = _step_sync if args.sync_steps else _step_async
    # restate-sdk logs each suspension/attempt end at INFO; keep the table readable.
    logging.getLogger("restate").setLevel(logging.WARNING)
    if args.profile:
        asyncio.run(profile(args.entries))
        return
    command = " ".join([".venv/bin/python -m bench.sdk_bench", *sys.argv[1:]])
    figures = asyncio.run(bench(args.rounds, args.entries, args.repeat))
    result = report(figures, args, command)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"results written to {RESULTS}")


if __name__ == "__main__":
    main()
