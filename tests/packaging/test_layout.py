"""One import name (issue 11): the code lives in the top-level folders the project was asked
for, and is imported as ``sluice`` through symlinks (``sluice`` -> ``sdk``, and in ``sdk/``
``broker``, ``ingress``, ``subscriptions``, ``connectors`` -> the folders). The folders are
importable by their own names from a checkout too, and a module imported both ways would be
two modules with two states: nothing may import them so."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import sluice

ROOT = Path(__file__).resolve().parents[2]
FOLDERS = ("broker", "ingress", "subscriptions", "connectors")
OWN_NAME = re.compile(
    r"^\s*(?:from|import)\s+(?:sdk|broker|ingress|subscriptions|connectors)(?:[.\s]|$)", re.M
)


def test_the_links_make_one_package() -> None:
    assert (ROOT / "sluice").resolve() == ROOT / "sdk"
    for name in FOLDERS:
        assert (ROOT / "sdk" / name).resolve() == ROOT / name, name
    assert Path(sluice.__file__).resolve() == ROOT / "sdk" / "__init__.py"


def test_nothing_imports_a_folder_by_its_own_name() -> None:
    tracked = subprocess.run(
        ["git", "ls-files", "*.py", "*.md"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    found = []
    for name in tracked:
        path = ROOT / name
        if path.is_symlink() or not path.is_file():
            continue
        for m in OWN_NAME.finditer(path.read_text()):
            line = path.read_text().count("\n", 0, m.start()) + 1
            found.append(f"{name}:{line}: {m.group().strip()}")
    assert not found, "import these as sluice.*:\n" + "\n".join(found)
