"""Serdes by name."""

from __future__ import annotations

from ._base import Serde
from ._json import JsonSerde
from ._raw import RawSerde

_KNOWN: dict[str, type[Serde]] = {"json": JsonSerde, "raw": RawSerde, "bytes": RawSerde}


def serde_for(name: str) -> Serde:
    """The serde registered under ``name`` ("json" or "raw"; Avro needs a registry and a
    subject: build ``AvroSerde`` directly)."""
    cls = _KNOWN.get(name)
    if cls is None:
        raise ValueError(f"unknown serde {name!r}: expected one of {', '.join(sorted(_KNOWN))}")
    return cls()
