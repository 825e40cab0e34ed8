"""docker-compose.yml against the real CLI (issue 11), without a container engine: every
``sluice`` command in it parses with the CLI's own parser, and the ports it publishes, the
health checks and the addresses the services give each other agree with what those
commands and the example service listen on. The declarations file it passes is valid."""

from __future__ import annotations

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
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return data["services"]  # type: ignore[no-any-return]


def _sluice_commands(service: dict[str, Any]) -> list[list[str]]:
    """The argument lists of the ``sluice`` CLI calls in a service's command (``sluice ...``
    or ``python -m sluice.broker ...``, alone or inside ``sh -c "a && b"``)."""
    command = service.get("command", [])
    words = shlex.split(command) if isinstance(command, str) else list(command)
    shell = words[:2] == ["sh", "-c"]
    parts = [shlex.split(p) for p in words[2].split("&&")] if shell else [words]
    out = []
    for part in parts:
        p = [w for w in part if not re.fullmatch(r"[A-Z_]+=\S*", w)]  # (VAR=value prefixes)
        if p[:3] == ["python", "-m", "sluice.broker"]:
            out.append(p[3:])
        elif p[:1] == ["sluice"]:
            out.append(p[1:])
    return out


def _parse(argv: list[str]) -> Any:
    """The CLI's own parse of ``argv``; a flag it does not know fails with the command."""
    try:
        return parser().parse_args(argv)
    except SystemExit:
        raise AssertionError(f"the sluice CLI refuses: sluice {shlex.join(argv)}") from None


def _health_port(service: dict[str, Any]) -> int:
    test = " ".join(service["healthcheck"]["test"])
    m = re.search(r"http://127\.0\.0\.1:(\d+)/health", test)
    assert m, f"the health check asks no /health: {test}"
    return int(m.group(1))


def test_the_broker_service_runs_a_valid_server_command(compose: dict[str, Any]) -> None:
    (server,) = _sluice_commands(compose["sluice"])
    args = _parse(server)
    assert args.command == "server"
    assert args.host == "0.0.0.0", "a broker in a container must listen beyond loopback"
    published = {int(p.split(":")[1]) for p in compose["sluice"]["ports"]}
    assert published == {args.ingress_port, args.admin_port}, published
    assert _health_port(compose["sluice"]) == args.admin_port
    config = Path(args.config)
    local = ROOT / config.relative_to("/src") if config.is_absolute() else ROOT / config
    assert local.is_file(), f"--config {args.config}: no such file in the repository"
    decl = load_declarations(local)
    assert decl.subscriptions, "the demo declarations hold no subscription"


def test_the_setup_registers_the_service_where_it_listens(compose: dict[str, Any]) -> None:
    (register,) = _sluice_commands(compose["setup"])
    args = _parse(register)
    assert (args.command, args.action) == ("deployments", "register")
    (server,) = _sluice_commands(compose["sluice"])
    admin = _parse(server).admin_port
    assert args.admin_url == f"http://sluice:{admin}", args.admin_url
    service = compose["orders-service"]
    port = int(service["environment"]["PORT"])
    assert args.url == f"http://orders-service:{port}", args.url
    assert _health_port(service) == port
    assert compose["setup"]["depends_on"]["sluice"]["condition"] == "service_healthy"
