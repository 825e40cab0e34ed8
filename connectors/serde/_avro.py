"""Avro in the Confluent Schema Registry wire format.

    byte 0      bytes 1-4            bytes 5..
    +------+---------------------+----------------------------+
    | 0x00 | schema id (u32, BE) | Avro binary body (no header) |
    +------+---------------------+----------------------------+

Handlers see JSON: `decode` turns a record into JSON bytes (Avro `bytes` and `fixed` as
ISO-8859-1 strings, as in Avro's own JSON encoding), `encode` turns a handler's JSON output
into a record of the subject's schema. A value that does not fit its schema is a
`DecodeError` that names the field, never a crash.
"""

from __future__ import annotations

import datetime as dt
import enum
import io
import json
import struct
import types
import typing
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import fastavro
import fastavro.validation
from fastavro.types import Schema as ParsedSchema
from pydantic import BaseModel

from ._base import DecodeError, Serde
from ._schema_registry import RegistryError, Schema, SchemaRegistry

MAGIC = 0
_PREFIX = struct.Struct(">bI")


class AvroSerde(Serde):
    """Avro records under one registry subject.

    `schema` is the writer schema for egress (registered on first use); without it, the
    subject's latest schema is used. Ingress reads any schema id the registry knows, and
    resolves it against a reader schema (Avro schema evolution): `schema` when one is
    given, the subject's latest schema with `read_latest` (fetched once), else the writer's.

    A record the registry cannot explain (an id it does not know) is a `DecodeError`; a
    registry that cannot answer now is a retriable `RegistryError`, since the record may
    well be fine.
    """

    name = "avro"
    content_type = "application/json"

    def __init__(
        self,
        registry: SchemaRegistry,
        subject: str,
        schema: Schema | None = None,
        *,
        read_latest: bool = False,
    ) -> None:
        self._registry = registry
        self._subject = subject
        self._schema = schema
        self._read_latest = read_latest and schema is None
        self._reader: ParsedSchema | None = _parse(schema) if schema is not None else None
        self._writer: tuple[int, ParsedSchema] | None = None
        self._parsed: dict[int, ParsedSchema] = {}
        self._unknown: dict[int, str] = {}  # ids the registry said no to, since the last prefetch

    def prefetch(self, values: Iterable[bytes | None]) -> None:
        """Fetch the reader schema and the writer schemas of these wire-format values that
        are not cached yet. Ids the registry does not know are remembered until the next
        prefetch (asked again then: they may have been registered meanwhile)."""
        self._unknown.clear()
        self._reader_schema()
        for value in values:
            if value is not None and len(value) >= _PREFIX.size and value[0] == MAGIC:
                schema_id = _PREFIX.unpack_from(value)[1]
                if schema_id not in self._parsed and schema_id not in self._unknown:
                    self._lookup(schema_id)

    def decode(self, value: bytes | None) -> bytes:
        if value is None:
            return b"null"
        if len(value) < _PREFIX.size:
            raise DecodeError(f"avro: {len(value)} bytes is shorter than the 5-byte wire header")
        magic, schema_id = _PREFIX.unpack_from(value)
        if magic != MAGIC:
            raise DecodeError(f"avro: magic byte is {magic}, expected 0 (Schema Registry format)")
        writer = self._parsed.get(schema_id)
        if writer is None and schema_id not in self._unknown:
            writer = self._lookup(schema_id)  # (blocking, unless prefetched)
        if writer is None:
            raise DecodeError(f"avro: unknown schema id {schema_id}: {self._unknown[schema_id]}")
        try:
            record = fastavro.schemaless_reader(
                io.BytesIO(value[_PREFIX.size :]), writer, self._reader_schema() or writer
            )
        except Exception as exc:
            why = str(exc) or type(exc).__name__  # (a body cut short: a bare EOFError)
            raise DecodeError(f"avro: cannot read with schema id {schema_id}: {why}") from None
        return json.dumps(record, default=_json_default, separators=(",", ":")).encode()

    def encode(self, payload: bytes) -> bytes:
        """The handler's JSON as an Avro record of the writer schema, in the wire format.
        ``DecodeError`` if it does not fit (or the registry has no such subject);
        ``RegistryError`` (retriable) if the registry cannot be reached."""
        try:
            record = json.loads(payload) if payload else None
        except ValueError as exc:
            raise DecodeError(f"avro: the handler output is not JSON: {exc}") from None
        schema_id, writer = self._writer_schema()
        try:
            fastavro.validation.validate(record, writer, raise_errors=True)
        except fastavro.validation.ValidationError as exc:
            raise DecodeError(
                f"avro: value does not match subject {self._subject!r}: {_why(exc)}"
            ) from None
        out = io.BytesIO()
        out.write(_PREFIX.pack(MAGIC, schema_id))
        fastavro.schemaless_writer(out, writer, record)
        return out.getvalue()

    def _writer_schema(self) -> tuple[int, ParsedSchema]:
        if self._writer is None:
            try:
                if self._schema is not None:
                    schema_id = self._registry.register(self._subject, self._schema)
                    raw = self._schema
                else:
                    schema_id, raw = self._registry.latest(self._subject)
            except RegistryError as exc:
                if exc.retriable:
                    raise  # the registry is down: the value may well be fine, try again later
                raise DecodeError(f"avro: {exc}") from None
            self._writer = (schema_id, _parse(raw))
        return self._writer

    def _reader_schema(self) -> ParsedSchema | None:
        """The reader schema (None: each record's writer schema). With `read_latest` a
        subject that has no valid schema is a `RegistryError` too: no record can be read."""
        if self._reader is None and self._read_latest:
            try:
                self._reader = _parse(self._registry.latest(self._subject)[1])
            except (RegistryError, DecodeError) as exc:
                raise RegistryError(
                    f"avro: the reader schema (subject {self._subject!r}): {exc}",
                    retriable=getattr(exc, "retriable", False),
                ) from None
        return self._reader

    def _lookup(self, schema_id: int) -> ParsedSchema | None:
        """The writer schema of this id from the registry, parsed and cached; None (and
        the reason in `_unknown`) if the registry has no valid schema of that id."""
        try:
            parsed = self._parsed[schema_id] = _parse(self._registry.schema(schema_id))
        except RegistryError as exc:
            if exc.retriable:
                raise
            self._unknown[schema_id] = str(exc)
            return None
        except DecodeError as exc:
            self._unknown[schema_id] = exc.reason
            return None
        return parsed


def load_schema(ref: str) -> Schema | None:
    """A schema reference as configured: inline JSON (``{...}``, ``[...]`` or a quoted
    primitive) or a path to a ``.avsc``/``.json`` file gives the schema (checked to be valid
    Avro); anything else is a registry subject, and gives None. ``ValueError`` says what is
    wrong with an invalid schema or a missing file."""
    text = ref.strip()
    source = "inline schema"
    if not text.startswith(("{", "[", '"')):
        if not (text.endswith((".avsc", ".json")) or "/" in text):
            return None
        source = text
        try:
            text = Path(text).read_text()
        except OSError as exc:
            raise ValueError(f"schema file {ref!r}: {exc.strerror or exc}") from None
    try:
        schema: Schema = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"{source} is not JSON: {exc}") from None
    try:
        fastavro.parse_schema(schema)
    except Exception as exc:
        raise ValueError(f"{source} is not a valid Avro schema: {exc}") from None
    return schema


def _parse(schema: Schema) -> ParsedSchema:
    try:
        return fastavro.parse_schema(schema)
    except Exception as exc:
        raise DecodeError(f"avro: invalid schema: {exc}") from None


def _why(exc: Exception) -> str:
    errors = getattr(exc, "errors", None) or ()
    parts = [f"{e.field or 'value'} is {e.datum!r}, expected {e.schema}" for e in errors[:3]]
    return "; ".join(parts) or str(exc) or type(exc).__name__


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("latin-1")
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    return str(value)


# --- pydantic models to Avro schemas ------------------------------------------------------

_PRIMITIVES: dict[Any, Any] = {
    str: "string",
    int: "long",
    float: "double",
    bool: "boolean",
    bytes: "bytes",
    dt.datetime: {"type": "long", "logicalType": "timestamp-millis"},
    dt.date: {"type": "int", "logicalType": "date"},
}


def avro_schema(model: type[BaseModel], *, namespace: str | None = None) -> dict[str, Any]:
    """The Avro record schema of a pydantic model: fields in declaration order, optional
    fields as a union with null (default null), nested models as nested records."""
    return _record(model, namespace, set())


def _record(model: type[BaseModel], namespace: str | None, seen: set[str]) -> dict[str, Any]:
    seen.add(model.__name__)
    fields = []
    for name, info in model.model_fields.items():
        avro_type = _type(info.annotation, namespace, seen)
        field: dict[str, Any] = {"name": info.alias or name, "type": avro_type}
        if info.description:
            field["doc"] = info.description
        if isinstance(avro_type, list) and avro_type[0] == "null":
            field["default"] = None
        fields.append(field)
    schema: dict[str, Any] = {"type": "record", "name": model.__name__, "fields": fields}
    if namespace:
        schema["namespace"] = namespace
    return schema


def _type(hint: Any, namespace: str | None, seen: set[str]) -> Any:
    if hint in _PRIMITIVES:
        return _PRIMITIVES[hint]
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        members = [_type(a, namespace, seen) for a in args if a is not type(None)]
        return ["null", *members] if type(None) in args else members
    if origin in (list, tuple, set, frozenset):
        return {"type": "array", "items": _type(args[0] if args else str, namespace, seen)}
    if origin is dict:
        if args and args[0] is not str:
            raise TypeError(f"Avro maps need string keys, not {args[0]!r}")
        return {"type": "map", "values": _type(args[1] if args else str, namespace, seen)}
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return {"type": "enum", "name": hint.__name__, "symbols": [str(m.value) for m in hint]}
    if isinstance(hint, type) and issubclass(hint, BaseModel):
        return hint.__name__ if hint.__name__ in seen else _record(hint, namespace, seen)
    raise TypeError(f"no Avro type for {hint!r}")
