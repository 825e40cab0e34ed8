"""Serialization of handler inputs, outputs, state and step results.

JSON by default; pydantic models (and any type pydantic understands) are validated and
describe themselves with a JSON Schema; `bytes` passes through untouched. A `Serde` is
pluggable per handler.
"""

from __future__ import annotations

import json
from typing import Any, Generic, Protocol, TypeVar, cast

T = TypeVar("T")

try:  # pydantic is optional: a handler service without it gets plain JSON.
    from pydantic import TypeAdapter, ValidationError

    _PYDANTIC = True
except ImportError:  # pragma: no cover - exercised only without pydantic installed
    _PYDANTIC = False  # then TypedSerde, the only user of the two names, is never built


class SerdeError(ValueError):
    """A value could not be encoded or decoded; the message says why."""


class Serde(Protocol[T]):
    """Turns values into bytes and back; ``deserialize`` may give None for no value (an
    empty body), as the JSON serdes do."""

    content_type: str

    def serialize(self, value: T) -> bytes: ...

    def deserialize(self, data: bytes) -> T | None: ...

    def json_schema(self) -> dict[str, Any] | None: ...


class JsonSerde(Generic[T]):
    """Plain JSON, no validation. Empty bytes decode to None."""

    content_type = "application/json"

    def serialize(self, value: T) -> bytes:
        if value is None:
            return b""
        try:
            return json.dumps(value, separators=(",", ":")).encode()
        except (TypeError, ValueError) as exc:
            raise SerdeError(f"not JSON-serializable: {exc}") from exc

    def deserialize(self, data: bytes) -> T | None:
        if not data:
            return None
        try:
            return cast(T, json.loads(data))  # not validated: T is taken on trust
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise SerdeError(f"invalid JSON: {exc}") from exc

    def json_schema(self) -> dict[str, Any] | None:
        return None


class BytesSerde:
    """Raw bytes, as they are."""

    content_type = "application/octet-stream"

    def serialize(self, value: bytes) -> bytes:
        return bytes(value)

    def deserialize(self, data: bytes) -> bytes:
        return data

    def json_schema(self) -> dict[str, Any] | None:
        return None


class TypedSerde(Generic[T]):
    """JSON validated against a type hint (pydantic models, dataclasses, lists, ...)."""

    content_type = "application/json"

    def __init__(self, type_hint: Any) -> None:
        if not _PYDANTIC:  # pragma: no cover
            raise SerdeError("typed serialization needs pydantic: pip install 'sluice[pydantic]'")
        self._type = type_hint
        self._adapter: TypeAdapter[T] = TypeAdapter(type_hint)

    def serialize(self, value: T) -> bytes:
        if value is None:
            return b""
        try:
            return self._adapter.dump_json(value)
        except Exception as exc:
            raise SerdeError(f"cannot encode as {self._name}: {exc}") from exc

    def deserialize(self, data: bytes) -> T | None:
        if not data:
            return None  # no body: the handler decides
        try:
            return self._adapter.validate_json(data)
        except ValidationError as exc:
            raise SerdeError(f"invalid {self._name}: {_short(exc)}") from exc

    def json_schema(self) -> dict[str, Any] | None:
        try:
            return self._adapter.json_schema()
        except Exception:
            return None

    @property
    def _name(self) -> str:
        return getattr(self._type, "__name__", repr(self._type))


def _short(exc: Exception) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        parts = []
        for err in errors()[:3]:
            where = ".".join(str(x) for x in err.get("loc", ())) or "value"
            parts.append(f"{where}: {err.get('msg')}")
        return "; ".join(parts)
    return str(exc)


_JSON: JsonSerde[Any] = JsonSerde()
_BYTES = BytesSerde()
_UNTYPED = (Any, object, None, type(None))
_CACHE: dict[Any, Serde[Any]] = {}


def serde_for(type_hint: Any) -> Serde[Any]:
    """The default serde for a type hint: bytes raw, untyped as plain JSON, others validated."""
    if type_hint is bytes:
        return _BYTES
    if type_hint in _UNTYPED or not _PYDANTIC:
        return _JSON
    try:
        serde = _CACHE.get(type_hint)
    except TypeError:  # unhashable hint
        return TypedSerde(type_hint)
    if serde is None:
        serde = _CACHE[type_hint] = TypedSerde(type_hint)
    return serde
