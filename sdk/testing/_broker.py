"""Brokers the harness can run handlers on: restate-server (the reference) and the Sluice broker.

Both are subprocesses launched by command line, on free loopback ports, with a data directory
of their own; the SDK never imports the broker package.
"""

from __future__ import annotations

import abc
import os
import shutil
import sys
import urllib.request
from pathlib import Path

from ._process import HarnessError, ManagedProcess, Supervised, free_port

RESTATE_VERSION = "1.7.12"
_RESTATE_ENV = "SLUICE_RESTATE_SERVER"


def _repo_root() -> Path:
    # sdk/testing/_broker.py -> the checkout that holds sdk/
    return Path(__file__).resolve().parents[2]


def restate_server_binary() -> Path:
    """The restate-server binary: `$SLUICE_RESTATE_SERVER`, else the one `make peers` installs."""
    configured = os.environ.get(_RESTATE_ENV)
    installed = _repo_root() / ".tools" / f"restate-server-{RESTATE_VERSION}" / "bin"
    path = Path(configured) if configured else installed / "restate-server"
    if not (path.is_file() and os.access(path, os.X_OK)):
        raise HarnessError(
            f"restate-server {RESTATE_VERSION} not found at {path}: run `make peers` "
            f"(or point ${_RESTATE_ENV} at the binary)"
        )
    return path


def _log_size(log_path: Path) -> int:
    return log_path.stat().st_size if log_path.exists() else 0


def _port_clash(log_path: Path, since: int) -> bool:
    """Whether what the log got after offset `since` says that a port was taken."""
    with log_path.open("rb") as log:
        log.seek(since)
        text = log.read().decode(errors="replace").lower()
    # restate-server: "Address in use (os error 98)"; Python: "[Errno 98] Address already in use".
    return "address in use" in text or "address already in use" in text


def _http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=1) as response:
        return bool(200 <= response.status < 300)


class Broker(Supervised, abc.ABC):
    """A broker process speaking Restate's ingress and admin HTTP APIs.

    `start` returns once both APIs answer their health checks; `stop` shuts down gracefully,
    `kill` sends SIGKILL, `restart` starts again on the same ports and the same data directory.
    Use it as a context manager; without `work_dir` it gets a temporary directory, removed on close.
    """

    name: str

    def __init__(self, *, work_dir: Path | None = None, startup_timeout: float = 30.0) -> None:
        # work_dir holds the broker's log, its config and its data directory.
        self._init_work_dir(work_dir, f"{self.name}-")
        self.startup_timeout = startup_timeout
        self.host = "127.0.0.1"
        self.ingress_port = 0
        self.admin_port = 0
        self._pick_ports()
        self._process: ManagedProcess | None = None

    @property
    def ingress_url(self) -> str:
        return f"http://{self.host}:{self.ingress_port}"

    @property
    def admin_url(self) -> str:
        return f"http://{self.host}:{self.admin_port}"

    @property
    def log_path(self) -> Path:
        return self.work_dir / f"{self.name}.log"

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    @property
    def data_dir(self) -> Path:
        """Where the broker keeps its durable state (inside `work_dir`, beside its log)."""
        return self.work_dir / "data"

    def running(self) -> bool:
        return self._process is not None and self._process.running()

    def wipe(self) -> None:
        """SIGKILL the broker and delete its data: the next `start` is a brand-new broker."""
        self.kill()
        shutil.rmtree(self.data_dir, ignore_errors=True)

    @abc.abstractmethod
    def _argv(self) -> list[str]:
        """The command line that runs the broker on this object's ports and directory."""

    def _env(self) -> dict[str, str]:
        return dict(os.environ)

    def _pick_ports(self) -> None:
        self.ingress_port = free_port()
        self.admin_port = free_port()

    def start(self) -> None:
        """Start and wait for both health checks; same ports and data as before on a restart.

        On the first start only, a port taken between choosing it and binding it (other test
        runs share the machine) means new ports and another try.
        """
        first = self._process is None
        for attempt in range(3):
            log_start = _log_size(self.log_path)
            try:
                self._start_once()
                return
            except HarnessError as exc:
                if not (first and attempt < 2 and _port_clash(self.log_path, log_start)):
                    raise
                self.kill()
                self._process = None
                self._pick_ports()
                with self.log_path.open("a") as log:
                    log.write(f"\n--- harness: {exc.args[0].splitlines()[0]}; new ports ---\n")

    def _start_once(self) -> None:
        if self._process is None:
            self._process = ManagedProcess(
                name=self.name,
                argv=self._argv(),
                log_path=self.log_path,
                env=self._env(),
                cwd=self.work_dir,
            )
        self._process.spawn()
        self._process.wait_until(
            lambda: (
                _http_ok(f"{self.ingress_url}/restate/health")
                and _http_ok(f"{self.admin_url}/health")
            ),
            timeout=self.startup_timeout,
            what=f"health checks on {self.ingress_url} and {self.admin_url}",
        )

    def stop(self) -> None:
        if self._process is not None:
            self._process.stop()

    def kill(self) -> None:
        if self._process is not None:
            self._process.kill()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} ingress={self.ingress_url} admin={self.admin_url}>"


class RestateServer(Broker):
    """restate-server 1.7.12, single node, TCP only on loopback, tuned to start in well under 1 s.

    The invocation retry policy is shortened (first retry after `retry_initial_interval`) so
    that tests which crash a handler do not wait for the production backoff.
    """

    name = "restate-server"

    def __init__(
        self,
        *,
        work_dir: Path | None = None,
        startup_timeout: float = 30.0,
        binary: Path | None = None,
        partitions: int = 4,
        retry_initial_interval: str = "100ms",
        retry_max_interval: str = "1s",
        inactivity_timeout: str = "1m",
        extra_config: str = "",
    ) -> None:
        super().__init__(work_dir=work_dir, startup_timeout=startup_timeout)
        self.binary = binary if binary is not None else restate_server_binary()
        self.partitions = partitions
        self.retry_initial_interval = retry_initial_interval
        self.retry_max_interval = retry_max_interval
        self.inactivity_timeout = inactivity_timeout
        self.extra_config = extra_config

    def _pick_ports(self) -> None:
        super()._pick_ports()
        self.fabric_port = free_port()

    def _config(self) -> str:
        # Keys from `restate-server --dump-config` and the 1.6 network-configuration notes:
        # a global bind-port is the node-to-node fabric, admin and ingress override it.
        return f"""\
node-name = "sluice-test"
listen-mode = "tcp"
bind-ip = "{self.host}"
bind-port = {self.fabric_port}
advertised-host = "{self.host}"
auto-provision = true
default-num-partitions = {self.partitions}
disable-telemetry = true
shutdown-timeout = "5s"
rocksdb-total-memory-size = "256 MB"
log-format = "compact"
log-disable-ansi-codes = true

[default-retry-policy]
initial-interval = "{self.retry_initial_interval}"
exponentiation-factor = 2.0
max-interval = "{self.retry_max_interval}"
max-attempts = 1000
on-max-attempts = "pause"

[worker.invoker]
inactivity-timeout = "{self.inactivity_timeout}"

[admin]
bind-port = {self.admin_port}
disable-web-ui = true

[ingress]
bind-port = {self.ingress_port}

{self.extra_config}
"""

    def _argv(self) -> list[str]:
        config = self.work_dir / "restate.toml"
        config.write_text(self._config())
        return [
            str(self.binary),
            "--no-logo",
            "--config-file",
            str(config),
            "--base-dir",
            str(self.data_dir),
        ]

    def _env(self) -> dict[str, str]:
        # Its own RESTATE_* settings from the caller's shell would override the config file.
        return {k: v for k, v in os.environ.items() if not k.startswith("RESTATE_")}


class SluiceBroker(Broker):
    """The Sluice broker, `python -m sluice.broker server`, run from the checkout that holds
    `broker/`."""

    name = "sluice-broker"

    def __init__(
        self,
        *,
        work_dir: Path | None = None,
        startup_timeout: float = 30.0,
        python: str = sys.executable,
        cwd: Path | None = None,
        extra_args: list[str] | None = None,
    ) -> None:
        super().__init__(work_dir=work_dir, startup_timeout=startup_timeout)
        self.python = python
        self.source_dir = cwd if cwd is not None else _repo_root()
        self.extra_args = list(extra_args or [])

    def _argv(self) -> list[str]:
        return [
            self.python,
            "-m",
            "sluice.broker",
            "server",
            "--data-dir",
            str(self.data_dir),
            "--host",
            self.host,
            "--ingress-port",
            str(self.ingress_port),
            "--admin-port",
            str(self.admin_port),
            *self.extra_args,
        ]

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        # The broker package is imported from the checkout, whatever the working directory.
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(self.source_dir), env.get("PYTHONPATH", "")) if p
        )
        return env
