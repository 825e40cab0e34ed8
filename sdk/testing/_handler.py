"""The handler service under test, as a subprocess of its own so that it can be SIGKILLed."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from ._process import HarnessError, ManagedProcess, Supervised, free_port, port_is_open

ALWAYS_REPLAY_ENV = "SLUICE_ALWAYS_REPLAY"


class HandlerProcess(Supervised):
    """An ASGI app (`module:attr`) served by hypercorn on a free loopback port.

    `env` is added to the inherited environment (for example a side-effect log path);
    `always_replay=True` sets `SLUICE_ALWAYS_REPLAY=1`, which the Sluice SDK's endpoint reads
    (other SDKs ignore it). `kill` sends SIGKILL; `restart` comes back on the same port, so the
    registered deployment URL stays valid.
    """

    def __init__(
        self,
        target: str,
        *,
        env: dict[str, str] | None = None,
        always_replay: bool = False,
        cwd: Path | None = None,
        python: str = sys.executable,
        work_dir: Path | None = None,
        startup_timeout: float = 30.0,
    ) -> None:
        self.target = target
        self.host = "127.0.0.1"
        self.port = free_port()
        self.startup_timeout = startup_timeout
        self._init_work_dir(work_dir, "handler-")
        source = cwd if cwd is not None else Path.cwd()
        full_env = dict(os.environ)
        full_env.update(env or {})
        full_env.pop(ALWAYS_REPLAY_ENV, None)
        if always_replay:
            full_env[ALWAYS_REPLAY_ENV] = "1"
        # `module:attr` is imported relative to `cwd`, like `python -m` would.
        full_env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(source), full_env.get("PYTHONPATH", "")) if p
        )
        full_env["PYTHONUNBUFFERED"] = "1"
        self.env = full_env
        self.python = python
        self._started = False
        self._process = ManagedProcess(
            name=f"handler {target}",
            argv=self._argv(),
            log_path=self.work_dir / "handler.log",
            env=full_env,
            cwd=source,
        )

    def _argv(self) -> list[str]:
        serve = [self.python, "-m", "sluice.testing._serve", self.target]
        return [*serve, "--host", self.host, "--port", str(self.port)]

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def log_path(self) -> Path:
        return self._process.log_path

    @property
    def pid(self) -> int | None:
        return self._process.pid

    def running(self) -> bool:
        return self._process.running()

    def start(self) -> None:
        """Start and wait until it listens; a restart comes back on the same port.

        On the first start only, a port taken meanwhile (other test runs share the machine)
        means a new port and another try.
        """
        for attempt in range(3):
            retry = not self._started and attempt < 2
            if port_is_open(self.host, self.port):
                if retry:
                    self._new_port()
                    continue
                raise HarnessError(f"port {self.port} is taken before {self.target} started")
            log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
            try:
                self._process.spawn()
                self._process.wait_until(
                    lambda: port_is_open(self.host, self.port),
                    timeout=self.startup_timeout,
                    what=f"listening on {self.url}",
                )
            except HarnessError:
                with self.log_path.open("rb") as log:
                    log.seek(log_start)
                    clash = b"address already in use" in log.read().lower()
                if retry and clash:
                    self._new_port()
                    continue
                raise
            self._started = True
            return

    def _new_port(self) -> None:
        self.port = free_port()
        self._process.argv = self._argv()

    def stop(self) -> None:
        # SIGINT: the launcher's graceful shutdown. SIGTERM is left to the app, since
        # restate-sdk takes over the loop's SIGTERM handler for its own use.
        self._process.stop(timeout=2.0, sig=signal.SIGINT)

    def kill(self) -> None:
        """SIGKILL the handler process, mid-whatever it is doing."""
        self._process.kill()
