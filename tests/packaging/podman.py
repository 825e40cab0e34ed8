"""Podman on the machines the tests run on (README, "Containers"): installed with apt-get when
missing, a containers.conf the sandbox accepts, and a base image built from Debian's packages,
since no image registry is reachable there. Each step is done once per machine."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

BASE_IMAGE = "localhost/debian-py:bookworm"
# The sandbox refuses the rlimits podman sets by default, its crun build cannot use the
# machine's cgroups, and there is no systemd to run health checks on timers.
CONTAINERS_CONF = """\
[containers]
default_ulimits = []

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
"""
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


class PodmanError(Exception):
    pass


def run(argv: list[str], env: dict[str, str], timeout: float = 600) -> str:
    """Run a podman (or podman-compose) command; its output, or PodmanError with the tail."""
    try:
        proc = subprocess.run(
            argv, check=False, env=env, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired as e:
        raise PodmanError(f"{' '.join(argv[:4])} ... did not finish in {timeout:.0f}s") from e
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-30:])
        raise PodmanError(f"{' '.join(argv[:6])} ... exited {proc.returncode}:\n{tail}")
    return proc.stdout


def environment(workdir: Path) -> dict[str, str]:
    """The environment podman runs with here: the containers.conf above, through CONTAINERS_CONF."""
    conf = workdir / "containers.conf"
    conf.write_text(CONTAINERS_CONF)
    return {**os.environ, "CONTAINERS_CONF": str(conf)}


def ensure_installed() -> None:
    """podman and runc (and debootstrap, for the base image), from Debian's packages."""
    if all(shutil.which(p) for p in ("podman", "runc", "debootstrap")):
        return
    if os.geteuid() != 0:
        raise PodmanError("podman is missing: apt-get install podman runc debootstrap (as root)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in (
        ["apt-get", "update", "-q"],
        ["apt-get", "install", "-y", "-q", "podman", "runc", "debootstrap"],
    ):
        proc = subprocess.run(
            argv, check=False, env=env, capture_output=True, text=True, timeout=900
        )
        if proc.returncode != 0:
            raise PodmanError(f"{' '.join(argv)} failed: {proc.stderr.strip()[-500:]}")


def _debian_mirror() -> str:
    """The Debian mirror apt is configured with (the one the machine can reach)."""
    for path in [Path("/etc/apt/sources.list"), *Path("/etc/apt/sources.list.d").glob("*.sources")]:
        if path.is_file():
            m = re.search(r"(?:URIs:|^deb)\s+(\S+/debian)/?\s", path.read_text(), re.M)
            if m:
                return m.group(1)
    return "http://deb.debian.org/debian"


def ensure_base_image(env: dict[str, str]) -> str:
    """A Debian bookworm image with python3 and its venv module, built once with debootstrap."""
    if (
        subprocess.run(["podman", "image", "exists", BASE_IMAGE], check=False, env=env).returncode
        == 0
    ):
        return BASE_IMAGE
    with tempfile.TemporaryDirectory(prefix="sluice-rootfs-") as tmp:
        root = Path(tmp) / "rootfs"
        include = "python3,python3-venv,ca-certificates"
        run(
            [
                "debootstrap",
                "--variant=minbase",
                f"--include={include}",
                "bookworm",
                str(root),
                _debian_mirror(),
            ],
            env,
            timeout=900,
        )
        tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
        imported = subprocess.run(
            ["podman", "import", "-", BASE_IMAGE],
            check=False,
            stdin=tar.stdout,
            env=env,
            capture_output=True,
        )
        tar.wait()
        if imported.returncode != 0 or tar.returncode != 0:
            raise PodmanError(f"podman import failed: {imported.stderr.decode()[-500:]}")
    return BASE_IMAGE


def build_args() -> str:
    """Arguments for every ``podman build``: Docker's image format (which keeps HEALTHCHECK) and
    the host's CA bundle, which the machine's package proxy needs, mounted where pip looks."""
    args = "--format docker"
    if CA_BUNDLE.is_file():
        args += f" -v {CA_BUNDLE}:{CA_BUNDLE}:ro"
    return args
