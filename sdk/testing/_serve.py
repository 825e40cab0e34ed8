"""Serve an ASGI app under hypercorn: `python -m sluice.testing._serve module:attr --port P`.

One port answers both HTTP/2 cleartext with prior knowledge (bidirectional streaming) and
HTTP/1.1 (request/response); which one a broker uses is chosen when the deployment is
registered. Long timeouts, because a broker keeps invocation streams open while handlers wait.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import signal
import sys
from typing import Any

from hypercorn.asyncio import serve
from hypercorn.config import Config


def _load(target: str) -> Any:
    module_name, _, attr = target.partition(":")
    if not attr:
        raise SystemExit(f"expected module:attr, got {target!r}")
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


async def _serve(app: Any, host: str, port: int) -> None:
    config = Config()
    config.bind = [f"{host}:{port}"]
    config.h2_max_concurrent_streams = 2**31 - 1
    config.keep_alive_max_requests = 2**31 - 1
    config.keep_alive_timeout = 3600
    config.graceful_timeout = 1
    config.accesslog = None
    config.errorlog = "-"
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    # The harness stops us with SIGINT; SIGTERM too, unless the app claims it (restate-sdk does).
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await serve(app, config, mode="asgi", shutdown_trigger=stop.wait)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m sluice.testing._serve")
    parser.add_argument("target", help="the ASGI app, as module:attr")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    app = _load(args.target)
    print(f"serving {args.target} on {args.host}:{args.port}", file=sys.stderr, flush=True)
    asyncio.run(_serve(app, args.host, args.port))


if __name__ == "__main__":
    main()
