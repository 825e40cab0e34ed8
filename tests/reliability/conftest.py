"""Reliability suite: each test fills a ``figures`` dict; the run prints them all at the end.

Figures go to ``tests/reliability/.results/<test>.json`` (git-ignored), one file per test,
so that a later run or a CI step can pick them up; ``pytest_terminal_summary`` prints the
ones written in this session.

Two variants: the fast one runs in ``make test``; ``make soak`` sets ``SLUICE_SOAK=1`` and each
test scales itself up with ``sized(fast, soak)`` (about an hour in all). A test's figures say
which variant produced them.
"""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

RESULTS = Path(__file__).parent / ".results"
SOAK = os.environ.get("SLUICE_SOAK") == "1"
VARIANT = "soak" if SOAK else "fast"
_written: list[Path] = []


T = TypeVar("T")


def sized(fast: T, soak: T) -> T:
    """The fast variant's size in ``make test``, the soak variant's under ``make soak``."""
    return soak if SOAK else fast


def peak_rss_mb(pid: int) -> float:
    """A process's peak resident memory so far (VmHWM), in MB.

    Raises ProcessLookupError once the process has exited: a zombie has no memory left
    to report, and a reaped one has no /proc entry.
    """
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        raise ProcessLookupError(f"process {pid} has exited") from None
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    raise ProcessLookupError(f"process {pid} has exited (no VmHWM: a zombie)")


@pytest.fixture
def seed() -> int:
    """One seed per test, printed in its figures; ``SLUICE_TEST_SEED=N`` repeats a run."""
    fixed = os.environ.get("SLUICE_TEST_SEED")
    return int(fixed) if fixed else random.SystemRandom().randrange(1 << 32)


@pytest.fixture
def rng(seed: int) -> random.Random:
    return random.Random(seed)


@pytest.fixture
def figures(request: pytest.FixtureRequest, seed: int) -> Iterator[dict[str, Any]]:
    out: dict[str, Any] = {"test": request.node.nodeid, "seed": seed, "variant": VARIANT}
    start = time.monotonic()
    yield out
    out["seconds"] = round(time.monotonic() - start, 2)
    rep = getattr(request.node, "rep_call", None)
    out["outcome"] = rep.outcome if rep is not None else "error"
    RESULTS.mkdir(exist_ok=True)
    name = request.node.name.replace("/", "_")
    path = RESULTS / (f"{name}.json" if not SOAK else f"{name}.soak.json")
    path.write_text(json.dumps(out, indent=2, sort_keys=True, default=str) + "\n")
    _written.append(path)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    rep = yield
    if rep.when == "call":
        item.rep_call = rep  # type: ignore[attr-defined]
    return rep


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _written:
        return
    terminalreporter.section("reliability figures")
    for path in _written:
        terminalreporter.write_line(f"{path.name}: {path.read_text().strip()}")
