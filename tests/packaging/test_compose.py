"""docker-compose.yml and the Dockerfiles against the real CLI (issue 11), without a container
engine: every ``sluice`` command the containers run parses with the CLI's own parser, and the
ports the file publishes, the images' health checks and the addresses the services give each
other agree with what those commands and the example service listen on. The declarations file
the broker reads is valid, and nothing is installed when a container starts.
(tests/packaging/test_compose_run.py runs the stack for real, with podman.)"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from sluice.broker.cli import parser
from sluice.subscriptions import load_declarations

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services: dict[str, Any] = data["services"]
    return services


class Dockerfile:
    """The instructions of a Dockerfile's final stage that say how its container runs."""

    def __init__(self, path: Path) -> None:
        text = re.sub(r"\\\n\s*", " ", path.read_text())  # join continued lines
        lines = [ln.strip() for ln in text.splitlines() if ln.strip() and ln[0] != "#"]
        final = max(i for i, ln in enumerate(lines) if ln.startswith("FROM "))
        self.stages = sum(ln.startswith("FROM ") for ln in lines)
        self.instructions = [tuple(ln.split(None, 1)) for ln in lines[final:]]

    def get(self, name: str) -> str | None:
        values = [v for k, v in self.instructions if k == name]
        return values[-1] if values else None

    def exec_form(self, name: str) -> list[str]:
        """An ENTRYPOINT's or CMD's words ([] without one); the exec form only, as a shell
        form would put ``sh -c`` in front of the program and keep signals from it."""
        value = self.get(name)
        words: list[str] = json.loads(value) if value is not None else []
        return words

    def health_command(self) -> str:
        value = self.get("HEALTHCHECK")
        assert value is not None, "the image has no HEALTHCHECK"
        return value.split("CMD", 1)[1]


def _image(service: dict[str, Any]) -> Dockerfile:
    build = service["build"]
    return Dockerfile(ROOT / build["context"] / build.get("dockerfile", "Dockerfile"))


def _argv(service: dict[str, Any]) -> list[str]:
    """What the service's container runs: its entrypoint, then its command."""
    image = _image(service)
    entrypoint = service.get("entrypoint") or image.exec_form("ENTRYPOINT")
    command = service.get("command") or image.exec_form("CMD")
    if isinstance(command, str):
        command = shlex.split(command)
    return [*entrypoint, *command]


def _sluice_calls(script: str) -> list[list[str]]:
    """The argument lists of the ``sluice`` calls in a shell script."""
    lexer = shlex.shlex(script, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    calls, words = [], []
    for token in [*lexer, ";"]:
        if token in (";", "&&", "||", "|"):
            while words and words[0] in ("do", "then", "else"):
                words.pop(0)
            if words[:1] == ["sluice"]:
                calls.append(words[1:])
            words = []
        else:
            words.append(token)
    return calls


def _parse(argv: list[str]) -> Any:
    """The CLI's own parse of ``argv``; a flag it does not know fails with the command."""
    try:
        return parser().parse_args(argv)
    except SystemExit:
        raise AssertionError(f"the sluice CLI refuses: sluice {shlex.join(argv)}") from None


def _server(compose: dict[str, Any]) -> Any:
    argv = _argv(compose["sluice"])
    assert argv[:1] == ["sluice"], f"the broker container runs {argv}, not sluice"
    return _parse(argv[1:])


def test_the_broker_service_runs_a_valid_server_command(compose: dict[str, Any]) -> None:
    args = _server(compose)
    assert args.command == "server"
    assert args.host == "0.0.0.0", "a broker in a container must listen beyond loopback"
    published = {int(p.split(":")[1]) for p in compose["sluice"]["ports"]}
    assert published == {args.ingress_port, args.admin_port}, published
    health = _image(compose["sluice"]).health_command()
    assert f"http://127.0.0.1:{args.admin_port}/health" in health, health
    mounts = dict(v.rsplit(":", 2)[:2] for v in compose["sluice"]["volumes"] if v.startswith("."))
    (local,) = [ROOT / src for src, dst in mounts.items() if dst == args.config]
    assert local.is_file(), f"--config {args.config}: mounted from {local}, no such file"
    assert load_declarations(local).subscriptions, "the demo declarations hold no subscription"
    assert any(v.split(":")[1] == args.data_dir for v in compose["sluice"]["volumes"]), (
        f"--data-dir {args.data_dir} is not on a volume: the log would die with the container"
    )


def test_the_setup_registers_the_service_where_it_listens(compose: dict[str, Any]) -> None:
    setup = compose["setup"]
    script = _argv(setup)
    assert script[:2] == ["sh", "-c"], script
    (register,) = _sluice_calls(script[2])
    args = _parse(register)
    assert (args.command, args.action) == ("deployments", "register")
    assert args.admin_url == f"http://sluice:{_server(compose).admin_port}", args.admin_url
    service = compose["orders-service"]
    port = int(service["environment"]["PORT"])
    assert args.url == f"http://orders-service:{port}", args.url
    assert "os.environ" in _image(service).health_command(), "the service's check ignores PORT"
    assert setup["depends_on"]["sluice"]["condition"] == "service_healthy"
    assert setup["depends_on"]["orders-service"]["condition"] == "service_healthy"


def test_the_images_install_at_build_and_run_unprivileged(compose: dict[str, Any]) -> None:
    for name in ("sluice", "orders-service", "setup"):
        image = _image(compose[name])
        assert image.stages >= 2, f"{name}: the wheel is built in a stage of its own"
        user = image.get("USER")
        assert user and user not in ("root", "0"), f"{name}: runs as {user or 'root'}"
        assert not any("pip" in w for w in _argv(compose[name])), f"{name} installs at start"
        for volume in compose[name].get("volumes", []):
            if volume.startswith("."):
                assert volume.endswith(":ro"), f"{name} mounts the checkout writable: {volume}"
