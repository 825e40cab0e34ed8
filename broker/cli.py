"""``sluice``: run the broker, and talk to a running one through its admin API.

Errors are one line on stderr and exit code 1; never a traceback. The commands that talk to
an admin API need only the SDK install (``pip install sluice``); ``server`` needs the broker
extra, and without it says so in one line and exits 2.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import importlib.metadata
import json
import logging
import os
import signal
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sluice.broker.config import BrokerSettings
    from sluice.broker.server import Broker


class CliError(Exception):
    pass


EXIT_MISSING_EXTRA = 2
# A broker whose Kafka log was interrupted starts again in its process (broker/errors.py), up
# to this many times in this many seconds; more often, it exits for its supervisor.
RESUMES_PER_WINDOW, RESUME_WINDOW_S = 5, 300.0
log = logging.getLogger("sluice.cli")
# Import names of the broker extra's distributions (pyproject.toml).
BROKER_EXTRA = {
    "pydantic", "rocksdict", "h2", "rich", "confluent_kafka", "orjson", "fastavro", "tomli_w",
    "yaml", "uvloop",
}  # fmt: skip


def _settings(args: argparse.Namespace) -> BrokerSettings:
    """The ``server`` flags, over the declarations file's ``[log]`` where a flag is not given."""
    from pydantic import ValidationError

    from sluice.broker.config import BrokerSettings
    from sluice.subscriptions import DeclarationError
    from sluice.subscriptions._cli import _pairs
    from sluice.subscriptions._declarations import load_declarations

    declared = None  # the declarations file's [log], beneath the flags
    if args.config:
        try:
            declared = load_declarations(Path(args.config)).log
        except DeclarationError as e:
            raise CliError(str(e)) from None

    def flag(value: Any, field: str, default: Any = None) -> Any:
        if value is not None:
            return value
        found = getattr(declared, field) if declared is not None else None
        return default if found is None else found

    try:
        return BrokerSettings(
            data_dir=Path(args.data_dir),
            host=args.host,
            ingress_port=args.ingress_port,
            admin_port=args.admin_port,
            partitions=args.partitions,
            physical_partitions=args.physical_partitions,
            body_limit=args.body_limit,
            read_timeout_s=args.read_timeout,
            fsync=not args.no_fsync,
            declarations=Path(args.config) if args.config else None,
            retry={
                "initial_interval_ms": args.retry_initial_interval_ms,
                "factor": args.retry_factor,
                "max_interval_ms": args.retry_max_interval_ms,
                "max_attempts": args.retry_max_attempts,
            },
            inactivity_timeout_s=args.inactivity_timeout,
            abort_timeout_s=args.abort_timeout,
            idempotency_retention_s=args.idempotency_retention,
            completion_retention_s=args.completion_retention,
            max_concurrent_invocations=args.max_concurrent_invocations,
            admission_limit=args.admission_limit,
            log=flag(args.log, "url"),
            log_properties={
                **(declared.properties if declared is not None else {}),
                **_pairs(args.log_property, "--log-property"),
            },
            log_replication_factor=flag(args.log_replication_factor, "replication_factor"),
            snapshots=flag(args.snapshots, "snapshots"),
            snapshot_endpoint=flag(args.snapshot_endpoint, "snapshot_endpoint"),
            snapshot_every_records=flag(args.snapshot_every, "snapshot_every_records", 50_000),
            snapshot_interval_s=flag(args.snapshot_interval, "snapshot_interval_s", 300.0),
        )
    except ValidationError as e:
        err = e.errors()[0]
        if not err["loc"]:  # (a rule across several flags)
            raise CliError(str(err["msg"]).removeprefix("Value error, ")) from None
        name = "-".join(str(x) for x in err["loc"]).replace("_", "-").removesuffix("-s")
        raise CliError(f"--{name}: {err['msg']}") from None


def _server(args: argparse.Namespace) -> None:
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    _run_loop(_serve(_settings(args)))


async def _serve(settings: BrokerSettings) -> None:
    """Run a broker until a stop is asked for; one whose Kafka log was interrupted starts
    again in this process (broker/errors.py), any other fatal error exits for a restart."""
    from sluice.broker.errors import EXIT_FATAL, LogInterrupted
    from sluice.broker.server import Broker

    # Signals first: a stop asked for while the broker starts is a clean stop once it has.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    stopping = asyncio.ensure_future(stop.wait())
    broker = await _start(Broker(settings), stopping)
    if broker is None:
        print("sluice: stopped before the broker had started", file=sys.stderr)
        return
    print(
        f"sluice: ingress on http://{settings.host}:{broker.ingress_port}, "
        f"admin on http://{settings.host}:{broker.admin_port}, data in {settings.data_dir}",
        flush=True,
    )
    # What startup built (modules, schemas, recovered tables) lives as long as the
    # process: frozen, a full collection no longer walks it again each time (under load
    # its pauses went from 80-140 ms to 13-20 ms).
    gc.collect()
    gc.freeze()
    resumed: list[float] = []  # when the broker was started again in this process
    while True:
        waits = [stopping, asyncio.ensure_future(broker.dead.wait())]
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        fatal = broker.fatal
        if fatal is None:
            break
        # The waiting requests have their 503s: let them go out first.
        await asyncio.sleep(settings.fatal_grace_s)
        now = time.monotonic()
        resumed = [t for t in resumed if now - t < RESUME_WINDOW_S]
        if not isinstance(fatal, LogInterrupted) or len(resumed) >= RESUMES_PER_WINDOW:
            # Exit the way a crash would (nothing more is flushed or closed: the tables
            # and the log may be what failed), for the supervisor to restart. Recovery
            # cuts the unsynced tail.
            print(
                f"sluice: fatal: {fatal.reason}; exiting with status {EXIT_FATAL} to be restarted",
                file=sys.stderr,
                flush=True,
            )
            os._exit(EXIT_FATAL)
        # Only the Kafka log's Kafka failed: the tables hold nothing it does not, so a new
        # broker on them and on the same ports is what a restart of the process would be.
        resumed.append(now)
        print(
            f"sluice: {fatal.reason}; the broker starts again in this process, from what "
            "its log holds",
            file=sys.stderr,
            flush=True,
        )
        try:
            await broker.stop()
        except Exception:
            log.exception("stopping the failed broker")
        again = settings.model_copy(
            update={"ingress_port": broker.ingress_port, "admin_port": broker.admin_port}
        )
        started = await _start(Broker(again), stopping)
        if started is None:
            return
        broker = started
        print(
            f"sluice: started again in {time.monotonic() - now:.1f}s",
            file=sys.stderr,
            flush=True,
        )
    await broker.stop()


async def _start(broker: Broker, stopping: asyncio.Future[Any]) -> Broker | None:
    """``broker`` started, or None when a stop came first. A start can wait (for a Kafka
    log that is not reachable yet): a stop ends the wait."""
    from sluice.broker.errors import Fatal
    from sluice.subscriptions import DeclarationError

    starting = asyncio.ensure_future(broker.start())
    await asyncio.wait([starting, stopping], return_when=asyncio.FIRST_COMPLETED)
    if not starting.done():
        starting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await starting
        return None
    try:
        starting.result()
    except OSError as e:
        raise CliError(f"cannot start: {e}") from None
    except Fatal as e:  # the log or the tables cannot be opened (a full disk, corruption)
        raise CliError(f"cannot start: {e.reason}") from None
    except DeclarationError as e:
        await broker.stop()
        raise CliError(str(e)) from None
    return broker


def _run_loop(coro: Any) -> None:
    try:
        import uvloop

        uvloop.run(coro)
    except ImportError:
        asyncio.run(coro)


def _admin(args: argparse.Namespace, method: str, path: str, body: Any = None) -> Any:
    url = args.admin_url.rstrip("/") + path
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("content-type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=args.timeout) as resp:
            raw = resp.read()
    except urllib.error.HTTPError as e:
        raw = e.read()
        try:
            msg = json.loads(raw).get("message", raw.decode())
        except ValueError:
            msg = raw.decode("utf-8", "replace")
        raise CliError(f"{method} {path}: HTTP {e.code}: {msg}") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise CliError(f"cannot reach the admin API at {args.admin_url}: {reason}") from None
    return json.loads(raw) if raw else None


def _progress(text: str) -> Any:
    """A spinner on a terminal (rich, from the broker extra; without it, the text once);
    nothing when piped."""
    if not sys.stderr.isatty():
        return contextlib.nullcontext()
    try:
        from rich.console import Console
    except ImportError:
        print(text, file=sys.stderr)
        return contextlib.nullcontext()
    return Console(stderr=True).status(text)


def _deployments(args: argparse.Namespace) -> None:
    if args.action == "register":
        with _progress(f"discovering {args.url} ..."):
            out = _admin(
                args,
                "POST",
                "/deployments",
                {"uri": args.url, "use_http_11": args.http1, "force": not args.no_force},
            )
        names = ", ".join(s["name"] for s in out["services"])
        print(f"registered {out['id']}: {names}")
    elif args.action == "list":
        for d in _admin(args, "GET", "/deployments")["deployments"]:
            svcs = ",".join(s["name"] for s in d["services"])
            print(
                f"{d['id']}  {d['uri']}  {d['http_version']}  v{d['max_protocol_version']}  {svcs}"
            )
    elif args.action == "remove":
        _admin(args, "DELETE", f"/deployments/{args.id}")
        print(f"removed {args.id}")


def _services(args: argparse.Namespace) -> None:
    if args.action == "list":
        for s in _admin(args, "GET", "/services")["services"]:
            handlers = ", ".join(h["name"] for h in s["handlers"])
            print(f"{s['name']}  {s['ty']}  rev {s['revision']}  [{handlers}]")
    else:
        print(
            json.dumps(_admin(args, "GET", f"/services/{urllib.parse.quote(args.name)}"), indent=2)
        )


def _invocations(args: argparse.Namespace) -> None:
    if args.action == "list":
        q = {k: v for k, v in (("status", args.status), ("service", args.service)) if v}
        path = "/invocations" + ("?" + urllib.parse.urlencode(q) if q else "")
        rows = _admin(args, "GET", path)["invocations"]
        for r in rows:
            fail = f"  last failure: {r['last_failure']}" if r["last_failure"] else ""
            print(f"{r['id']}  {r['status']:<11}  {r['target']}{fail}")
        if not rows:
            print("no invocations")
    else:
        with _progress(f"{args.action} {args.id} ..."):
            _admin(args, "PATCH", f"/invocations/{args.id}/{args.action}")
        print(f"{args.action}: {args.id}")


def _state(args: argparse.Namespace) -> None:
    svc = urllib.parse.quote(args.service, safe="")
    key = urllib.parse.quote(args.key, safe="")
    out = _admin(args, "GET", f"/state/{svc}/{key}")
    if not out["state"]:
        print(f"no state for {args.service}/{args.key}")
    for k, v in out["state"].items():
        print(f"{k} = {json.dumps(v)}")


def _log(args: argparse.Namespace) -> None:
    health = _admin(args, "GET", "/health")
    for log in health.get("partitions") or [health["log"]]:
        applied = log.pop("applied")
        if log["kind"] == "kafka":
            behind = max(int(log["high"]) - int(applied), 0)
            snap = log.get("snapshot")
            taken = f", last snapshot at LSN {snap}" if snap else ""
            print(f"kafka log {log['topic']}, partition {log['partition']}{taken}")
            print(
                f"  start {log['start']}  applied {applied}  high watermark {log['high']}", end=""
            )
            print(f"  ({behind} to apply, {log['in_flight']} appends in flight)")
            if log.get("snapshot_error"):
                print(f"  the last snapshot failed: {log['snapshot_error']}")
        else:
            print(f"embedded log in {log['directory']} ({log['segments']} segments)")
            print(f"  start {log['start']}  applied {applied}  tail {log['tail']}")


def _version() -> str:
    try:
        return importlib.metadata.version("sluice")
    except importlib.metadata.PackageNotFoundError:  # (run from a checkout, not installed)
        return "(not installed)"


def parser() -> argparse.ArgumentParser:  # noqa: PLR0915 - one declaration per option
    ap = argparse.ArgumentParser(prog="sluice", description="Sluice durable execution broker")
    ap.add_argument("--version", action="version", version=f"sluice {_version()}")
    sub = ap.add_subparsers(dest="command", required=True)

    s = sub.add_parser("server", help="run the broker")
    s.add_argument("--data-dir", default="./sluice-data")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--ingress-port", type=int, default=8080)
    s.add_argument("--admin-port", type=int, default=9070)
    s.add_argument("--partitions", type=int, default=8)
    s.add_argument(
        "--physical-partitions",
        action="store_true",
        help="give each partition a processor, tables and a log (a Kafka partition of --log) of "
        "its own; chosen when the data directory is created (Kafka subscriptions and egress "
        "need one processor for now)",
    )
    s.add_argument("--body-limit", type=int, default=32 * 1024 * 1024, help="bytes")
    s.add_argument(
        "--read-timeout", type=float, default=30.0,
        help="seconds a client has to send a whole request (then 408); "
        "idle connections close after it",
    )  # fmt: skip
    s.add_argument(
        "--no-fsync", action="store_true", help="unsafe: skip fdatasync (benchmarks only)"
    )
    s.add_argument("--retry-initial-interval-ms", type=int, default=50)
    s.add_argument("--retry-factor", type=float, default=2.0)
    s.add_argument("--retry-max-interval-ms", type=int, default=10_000)
    s.add_argument("--retry-max-attempts", type=int, default=100, help="then the invocation pauses")
    s.add_argument(
        "--inactivity-timeout", type=float, default=60.0, help="seconds; then ask to suspend"
    )
    s.add_argument(
        "--abort-timeout", type=float, default=60.0, help="seconds after that; then abort"
    )
    s.add_argument("--idempotency-retention", type=float, default=86_400.0, help="seconds")
    s.add_argument("--completion-retention", type=float, default=86_400.0, help="seconds")
    s.add_argument(
        "--max-concurrent-invocations",
        type=int,
        default=0,
        help="attempts streaming at once; 0: no limit",
    )
    s.add_argument(
        "--admission-limit",
        type=int,
        default=2_000,
        help="work in flight (invocations, HTTP requests, Kafka records) at which the ingress "
        "answers 503 with Retry-After and subscriptions stop reading; 0: no limit",
    )
    s.add_argument(
        "--config",
        help="declarations file (sluice.toml or .yaml): the log ([log]), Kafka clusters, "
        "subscriptions",
    )
    s.add_argument(
        "--log",
        metavar="kafka://HOST:PORT[,HOST:PORT]/TOPIC",
        help="keep the log in a Kafka topic instead of the data directory (created on first "
        "start with one partition per --partitions)",
    )
    s.add_argument(
        "--log-property",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a librdkafka property for the log's clients (SASL, TLS, ...); repeatable",
    )
    s.add_argument(
        "--log-replication-factor",
        type=int,
        help="of a log topic the broker creates (default: 3 on 3 or more Kafka brokers, else 1)",
    )
    s.add_argument(
        "--snapshots",
        metavar="DIR|s3://BUCKET/PREFIX",
        help="with --log: snapshots of the tables here; a broker that lost its data directory "
        "restores the newest and replays the log from it (S3 credentials: the usual AWS "
        "environment variables)",
    )
    s.add_argument(
        "--snapshot-endpoint",
        metavar="URL",
        help="the endpoint of an S3-compatible store (MinIO, ...) for --snapshots s3://...",
    )
    s.add_argument("--snapshot-every", type=int, help="log records (50,000)")
    s.add_argument("--snapshot-interval", type=float, help="seconds (300)")
    s.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        default="info",
        help="to stderr (default: info)",
    )
    s.set_defaults(fn=_server)

    def client(name: str, help: str) -> argparse.ArgumentParser:
        c = sub.add_parser(name, help=help)
        c.add_argument("--admin-url", default="http://127.0.0.1:9070")
        c.add_argument("--timeout", type=float, default=30.0)
        return c

    d = client("deployments", "register, list and remove deployments")
    dsub = d.add_subparsers(dest="action", required=True)
    r = dsub.add_parser("register")
    r.add_argument("url")
    r.add_argument("--http1", action="store_true", help="use HTTP/1.1 request/response")
    r.add_argument("--no-force", action="store_true")
    dsub.add_parser("list")
    rm = dsub.add_parser("remove")
    rm.add_argument("id")
    d.set_defaults(fn=_deployments)

    sv = client("services", "list and describe services")
    ssub = sv.add_subparsers(dest="action", required=True)
    ssub.add_parser("list")
    ds = ssub.add_parser("describe")
    ds.add_argument("name")
    sv.set_defaults(fn=_services)

    inv = client("invocations", "list, cancel and kill invocations")
    isub = inv.add_subparsers(dest="action", required=True)
    ls = isub.add_parser("list")
    ls.add_argument("--status")
    ls.add_argument("--service")
    for name in ("cancel", "kill", "purge", "resume"):
        x = isub.add_parser(name)
        x.add_argument("id")
    inv.set_defaults(fn=_invocations)

    st = client("state", "read object and workflow state")
    stsub = st.add_subparsers(dest="action", required=True)
    g = stsub.add_parser("get")
    g.add_argument("service")
    g.add_argument("key")
    st.set_defaults(fn=_state)

    lg = client("log", "where the broker's log stands")
    lg.add_subparsers(dest="action", required=True).add_parser("status")
    lg.set_defaults(fn=_log)

    from sluice.subscriptions._cli import add_commands

    add_commands(client)
    return ap


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    try:
        args.fn(args)
    except CliError as e:
        print(f"sluice: error: {e}", file=sys.stderr)
        sys.exit(1)
    except ModuleNotFoundError as e:
        if (e.name or "").split(".")[0] not in BROKER_EXTRA:
            raise
        print(
            f"sluice: error: '{args.command}' needs the broker extra ({e.name} is not"
            " installed): pip install 'sluice[broker]'",
            file=sys.stderr,
        )
        sys.exit(EXIT_MISSING_EXTRA)
    except KeyboardInterrupt:
        sys.exit(130)
