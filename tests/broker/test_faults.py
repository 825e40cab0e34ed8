"""broker/faults.py: SLUICE_FAULTS parses strictly, and a process dies at the N-th pass."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from sluice.broker.faults import ENV, POINTS, parse
from tests.broker.conftest import ROOT


def test_parse() -> None:
    assert parse("") == {}
    assert parse("after-kafka-poll=3, after-log-append=1") == {
        "after-kafka-poll": 3,
        "after-log-append": 1,
    }
    with pytest.raises(ValueError, match="unknown fault point 'after-poll'"):
        parse("after-poll=1")
    for bad in ("after-log-append", "after-log-append=0", "after-log-append=x"):
        with pytest.raises(ValueError, match="needs a count of at least 1"):
            parse(bad)


_PASSES = (
    "from broker import faults\n"
    "for n in range(3):\n"
    "    for point in faults.POINTS:\n"
    "        print(point, n, flush=True)\n"
    "        faults.reached(point)\n"
)


def _run(spec: str | None) -> subprocess.CompletedProcess[str]:
    """Three passes through each point, in a process armed with ``spec`` (None: unarmed)."""
    env = {k: v for k, v in os.environ.items() if k != ENV}
    if spec is not None:
        env[ENV] = spec
    return subprocess.run(
        [sys.executable, "-c", _PASSES],
        check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=30,
    )  # fmt: skip


def test_dies_at_the_nth_pass() -> None:
    r = _run(f"{POINTS[-1]}=2")
    assert r.returncode == -signal.SIGKILL, r.stderr
    assert r.stdout.splitlines()[-1] == f"{POINTS[-1]} 1"
    assert f"sluice fault: SIGKILL at {POINTS[-1]}" in r.stderr
    r = _run(None)
    assert r.returncode == 0 and len(r.stdout.splitlines()) == 3 * len(POINTS), r.stderr
