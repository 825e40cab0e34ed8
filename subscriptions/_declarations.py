"""The declarations file (``sluice.toml`` or YAML), read at start.

    [[kafka_clusters]]
    name = "local"
    properties = { "bootstrap.servers" = "127.0.0.1:9092" }

    [[subscriptions]]
    name = "orders"                      # identifies what was ingested; keep it stable
    source = "kafka://local/orders"
    sink = "service://Orders/process"
    serde = "json"                       # or "raw", or "avro" (see the README's Kafka guide)
    dead_letter_topic = "orders-dlq"
    max_in_flight = 500
    options = { "auto.offset.reset" = "earliest" }

An invalid file stops the broker at start with ``FILE:LINE: reason``.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from ._models import Declarations


class DeclarationError(Exception):
    """The declarations file is invalid; the message is ``FILE:LINE: reason``."""


def load_declarations(path: Path) -> Declarations:
    try:
        text = path.read_text()
    except OSError as e:
        raise DeclarationError(f"{path}: cannot read: {e.strerror}") from None
    if path.suffix in (".yaml", ".yml"):
        data, lines = _yaml(path, text)
    else:
        data, lines = _toml(path, text)
    _check_names(path, data, lines)
    try:
        return Declarations.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        loc = tuple(err["loc"])
        line = _line_of(lines, loc)
        where = ".".join(str(x) for x in loc) or "file"
        msg = err["msg"].removeprefix("Value error, ")
        raise DeclarationError(f"{path}:{line}: {where}: {msg}") from None


def _check_names(path: Path, data: Any, lines: dict[tuple[Any, ...], int]) -> None:
    subs = data.get("subscriptions") if isinstance(data, dict) else None
    seen: set[str] = set()
    for i, s in enumerate(subs if isinstance(subs, list) else []):
        if not isinstance(s, dict):
            continue
        line = _line_of(lines, ("subscriptions", i))
        if "name" not in s:
            raise DeclarationError(
                f"{path}:{line}: subscriptions.{i}: needs a name (it identifies what was ingested)"
            )
        if s["name"] in seen:
            raise DeclarationError(
                f"{path}:{line}: subscriptions.{i}: name {s['name']!r} is declared twice"
            )
        seen.add(s["name"])


def _line_of(lines: dict[tuple[Any, ...], int], loc: tuple[Any, ...]) -> int:
    for n in range(len(loc), 0, -1):
        if loc[:n] in lines:
            return lines[loc[:n]]
    return 1


# --- TOML ---------------------------------------------------------------------------------

_TABLE = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
_KEY = re.compile(r'^\s*("[^"]*"|[A-Za-z0-9_.-]+)\s*=')


def _toml(path: Path, text: str) -> tuple[Any, dict[tuple[Any, ...], int]]:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        m = re.search(r"line (\d+)", str(e))
        raise DeclarationError(f"{path}:{m.group(1) if m else 1}: {e}") from None
    # tomllib keeps no positions: map table headers and keys to lines with a small scan.
    lines: dict[tuple[Any, ...], int] = {}
    counts: dict[str, int] = {}
    table: tuple[Any, ...] = ()
    for no, raw in enumerate(text.splitlines(), 1):
        t = _TABLE.match(raw)
        if t:
            parts = [p.strip().strip('"') for p in t.group(2).split(".")]
            if t.group(1) == "[[":
                idx = counts.get(parts[0], 0)
                counts[parts[0]] = idx + 1
                table = (parts[0], idx, *parts[1:])
            elif parts[0] in counts:  # a sub-table of the last array element
                table = (parts[0], counts[parts[0]] - 1, *parts[1:])
            else:
                table = tuple(parts)
            lines.setdefault(table, no)
            continue
        k = _KEY.match(raw)
        if k:
            lines.setdefault((*table, k.group(1).strip('"')), no)
    return data, lines


# --- YAML ---------------------------------------------------------------------------------


def _yaml(path: Path, text: str) -> tuple[Any, dict[tuple[Any, ...], int]]:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 1
        raise DeclarationError(f"{path}:{line}: {getattr(e, 'problem', e)}") from None
    lines: dict[tuple[Any, ...], int] = {}

    def walk(n: Any, loc: tuple[Any, ...]) -> None:
        lines.setdefault(loc, n.start_mark.line + 1)
        if isinstance(n, yaml.MappingNode):
            for k, v in n.value:
                lines.setdefault((*loc, k.value), k.start_mark.line + 1)
                walk(v, (*loc, k.value))
        elif isinstance(n, yaml.SequenceNode):
            for i, v in enumerate(n.value):
                walk(v, (*loc, i))

    if node is not None:
        walk(node, ())
    return data if data is not None else {}, lines
