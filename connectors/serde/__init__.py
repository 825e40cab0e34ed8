"""Serialization shared by Kafka ingress and egress: bytes on the wire <-> handler payloads.

A ``Serde`` turns a Kafka record value into the bytes a handler receives as its input (and,
for egress, a handler's output back into a record value). The handler side always speaks
JSON or raw bytes, because that is what the service protocol carries; the Kafka side may be
JSON, raw bytes, or Avro in the Schema Registry wire format.
"""

from ._avro import AvroSerde, avro_schema, load_schema
from ._base import DecodeError, Serde
from ._json import JsonSerde, is_json
from ._keys import KEY_PREFIX, decode_key, encode_key
from ._raw import RawSerde
from ._registry import serde_for
from ._schema_registry import (
    FileSchemaRegistry,
    HttpSchemaRegistry,
    RegistryError,
    SchemaRegistry,
    redacted,
    registry_at,
)

__all__ = [
    "KEY_PREFIX",
    "AvroSerde",
    "DecodeError",
    "FileSchemaRegistry",
    "HttpSchemaRegistry",
    "JsonSerde",
    "RawSerde",
    "RegistryError",
    "SchemaRegistry",
    "Serde",
    "avro_schema",
    "decode_key",
    "encode_key",
    "is_json",
    "load_schema",
    "redacted",
    "registry_at",
    "serde_for",
]
