"""Avro with the Schema Registry wire format, through both registries."""

from __future__ import annotations

import json
import struct
import threading
from collections.abc import Iterator
from enum import Enum
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import fastavro
import pytest
from pydantic import BaseModel

from sluice.connectors.serde import (
    AvroSerde,
    DecodeError,
    FileSchemaRegistry,
    HttpSchemaRegistry,
    RegistryError,
    SchemaRegistry,
    avro_schema,
    load_schema,
    redacted,
    registry_at,
)

from .registry_server import RegistryServer


class Status(Enum):
    NEW = "NEW"
    PAID = "PAID"


class Line(BaseModel):
    sku: str
    quantity: int


class Order(BaseModel):
    id: str
    customer: str
    total: float
    status: Status
    lines: list[Line]
    note: str | None = None
    tags: dict[str, str] = {}


ORDER = {
    "id": "o-1",
    "customer": "ada",
    "total": 12.5,
    "status": "PAID",
    "lines": [{"sku": "x", "quantity": 2}],
    "note": None,
    "tags": {"channel": "web"},
}


@pytest.fixture(params=["file", "http"])
def registry(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SchemaRegistry]:
    if request.param == "file":
        yield FileSchemaRegistry(tmp_path / "registry.json")
    else:
        with RegistryServer() as server:
            yield HttpSchemaRegistry(server.url)


def test_pydantic_model_maps_to_an_avro_record() -> None:
    schema = avro_schema(Order, namespace="shop")
    fastavro.parse_schema(schema)  # a valid Avro schema
    fields = {f["name"]: f for f in schema["fields"]}
    assert schema["name"] == "Order" and schema["namespace"] == "shop"
    assert fields["total"]["type"] == "double"
    assert fields["note"] == {"name": "note", "type": ["null", "string"], "default": None}
    assert fields["status"]["type"] == {
        "type": "enum",
        "name": "Status",
        "symbols": ["NEW", "PAID"],
    }
    assert fields["lines"]["type"]["items"]["type"] == "record"
    assert fields["tags"]["type"] == {"type": "map", "values": "string"}


def test_round_trip_in_wire_format(registry: SchemaRegistry) -> None:
    serde = AvroSerde(registry, "orders-value", avro_schema(Order))
    wire = serde.encode(json.dumps(ORDER).encode())
    magic, schema_id = struct.unpack(">bI", wire[:5])
    assert magic == 0
    assert schema_id == registry.latest("orders-value")[0]
    # A reader with no schema of its own (ingress) resolves the id through the registry.
    reader = AvroSerde(registry, "orders-value")
    assert json.loads(reader.decode(wire)) == ORDER
    assert Order.model_validate_json(reader.decode(wire)).status is Status.PAID


def test_registering_the_same_schema_twice_gives_one_id(registry: SchemaRegistry) -> None:
    schema = avro_schema(Line)
    reordered = json.loads(json.dumps(schema, sort_keys=True))
    assert registry.register("lines", schema) == registry.register("lines", reordered)


def test_value_that_does_not_match_the_schema_is_a_clear_error(registry: SchemaRegistry) -> None:
    serde = AvroSerde(registry, "orders-value", avro_schema(Order))
    bad = dict(ORDER, total="a lot")
    with pytest.raises(DecodeError, match=r"does not match subject 'orders-value'.*total"):
        serde.encode(json.dumps(bad).encode())
    missing = {k: v for k, v in ORDER.items() if k != "customer"}
    with pytest.raises(DecodeError, match="customer"):
        serde.encode(json.dumps(missing).encode())


def test_bad_wire_bytes_are_decode_errors(registry: SchemaRegistry) -> None:
    serde = AvroSerde(registry, "orders-value", avro_schema(Order))
    with pytest.raises(DecodeError, match="magic byte is 1"):
        serde.decode(b"\x01\x00\x00\x00\x01abc")
    with pytest.raises(DecodeError, match="shorter than the 5-byte"):
        serde.decode(b"\x00\x01")
    with pytest.raises(DecodeError, match="unknown schema id 999"):
        serde.decode(b"\x00" + struct.pack(">I", 999) + b"\x02")
    wire = serde.encode(json.dumps(ORDER).encode())
    with pytest.raises(DecodeError, match="cannot read with schema id"):
        serde.decode(wire[:8])  # truncated body


def test_reader_schema_evolution_adds_a_defaulted_field(registry: SchemaRegistry) -> None:
    v1 = avro_schema(Line)
    v2 = {**v1, "fields": [*v1["fields"], {"name": "gift", "type": "boolean", "default": False}]}
    wire = AvroSerde(registry, "lines", v1).encode(b'{"sku":"x","quantity":1}')
    assert json.loads(AvroSerde(registry, "lines", v2).decode(wire)) == {
        "sku": "x",
        "quantity": 1,
        "gift": False,
    }


def test_http_registry_caches_schema_lookups() -> None:
    with RegistryServer() as server:
        writer = AvroSerde(HttpSchemaRegistry(server.url), "lines", avro_schema(Line))
        wire = writer.encode(b'{"sku":"x","quantity":1}')
        reader = AvroSerde(HttpSchemaRegistry(server.url), "lines")
        for _ in range(5):
            reader.decode(wire)
        assert server.requests["GET /schemas"] == 1


def test_unreachable_registry_on_decode_is_retriable_not_a_bad_record() -> None:
    """Ingress must wait for the registry, not dead-letter a record that may well be fine."""
    serde = AvroSerde(HttpSchemaRegistry("http://127.0.0.1:9", timeout=1), "x")
    for call in (serde.decode, lambda v: serde.prefetch([v])):
        with pytest.raises(RegistryError, match="unreachable") as caught:
            call(b"\x00\x00\x00\x00\x01\x02")
        assert caught.value.retriable


def test_a_wrong_registry_address_stalls_instead_of_dead_lettering() -> None:
    """A 404 for a path the registry does not serve (a wrong address: here a path prefix),
    or an answer from something that is not a registry, is not an unknown schema id: the
    record may be fine, so the error is retriable. A registry's own 40403 is not."""
    with RegistryServer() as server:
        registry = HttpSchemaRegistry(server.url)
        wire = AvroSerde(registry, "lines", avro_schema(Line)).encode(b'{"sku":"x","quantity":1}')
        wrong = AvroSerde(HttpSchemaRegistry(server.url + "/registry"), "lines")
        with pytest.raises(RegistryError, match=r"HTTP 404.*check the registry address") as c:
            wrong.prefetch([wire])
        assert c.value.retriable
        unknown = b"\x00" + struct.pack(">I", 77) + b"\x02"
        with pytest.raises(DecodeError, match="unknown schema id 77"):
            AvroSerde(HttpSchemaRegistry(server.url), "lines").decode(unknown)
    with ThreadingHTTPServer(("127.0.0.1", 0), _NotARegistry) as plain:
        threading.Thread(target=plain.serve_forever, daemon=True).start()
        try:
            host, port = plain.server_address[:2]
            stray = AvroSerde(HttpSchemaRegistry(f"http://{host!s}:{port}"), "lines")
            with pytest.raises(RegistryError, match="HTTP 404") as c:
                stray.decode(wire)
            assert c.value.retriable
        finally:
            plain.shutdown()


class _NotARegistry(BaseHTTPRequestHandler):
    """A web server that is not a Schema Registry: an HTML 404 for everything."""

    def do_GET(self) -> None:
        body = b"<html><body>Not Found</body></html>"
        self.send_response(404)
        self.send_header("content-type", "text/html")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_prefetch_leaves_decode_without_registry_requests() -> None:
    """Ingress prefetches a batch's schemas off the event loop: one request per id not yet
    cached, including ids the registry does not know (asked again at the next prefetch);
    decoding them afterwards asks nothing."""
    with RegistryServer() as server:
        registry = HttpSchemaRegistry(server.url)
        wire = AvroSerde(registry, "lines", avro_schema(Line)).encode(b'{"sku":"x","quantity":1}')
        unknown = b"\x00" + struct.pack(">I", 77) + b"\x02"
        values = [wire, unknown, wire, b"\x01bad", b"\x00", None, unknown]
        reader = AvroSerde(HttpSchemaRegistry(server.url), "lines")
        reader.prefetch(values)
        assert server.requests["GET /schemas"] == 2  # ids 1 and 77, once each
        assert json.loads(reader.decode(wire)) == {"sku": "x", "quantity": 1}
        with pytest.raises(DecodeError, match=r"unknown schema id 77.*404"):
            reader.decode(unknown)
        assert server.requests["GET /schemas"] == 2
        server.failing = 503
        with pytest.raises(RegistryError, match="HTTP 503") as caught:
            reader.prefetch([unknown])  # (asked again: it may have been registered since)
        assert caught.value.retriable
        reader.prefetch([wire])  # cached: no request, so no error
        assert json.loads(reader.decode(wire)) == {"sku": "x", "quantity": 1}


def test_reader_schema_from_a_subject(registry: SchemaRegistry) -> None:
    """``read_latest``: records are resolved against the subject's latest schema, fetched
    once; a subject with no schema cannot read anything, which is not the record's fault."""
    v1 = avro_schema(Line)
    v2 = {**v1, "fields": [*v1["fields"], {"name": "gift", "type": "boolean", "default": True}]}
    wire = AvroSerde(registry, "lines", v1).encode(b'{"sku":"x","quantity":1}')
    registry.register("lines-reader", v2)
    reader = AvroSerde(registry, "lines-reader", read_latest=True)
    reader.prefetch([wire])
    assert json.loads(reader.decode(wire)) == {"sku": "x", "quantity": 1, "gift": True}
    with pytest.raises(RegistryError, match=r"reader schema.*nothing-here") as caught:
        AvroSerde(registry, "nothing-here", read_latest=True).prefetch([wire])
    assert not caught.value.retriable


def test_unreachable_registry_on_encode_is_retriable_not_a_misfit() -> None:
    """Egress must wait for the registry, not dead-letter a value that may well fit."""
    serde = AvroSerde(HttpSchemaRegistry("http://127.0.0.1:9", timeout=1), "x", avro_schema(Line))
    with pytest.raises(RegistryError, match="unreachable") as caught:
        serde.encode(b'{"sku":"x","quantity":1}')
    assert caught.value.retriable


def test_an_unknown_subject_is_a_misfit(registry: SchemaRegistry) -> None:
    with pytest.raises(DecodeError, match="nothing-here"):
        AvroSerde(registry, "nothing-here").encode(b'{"sku":"x","quantity":1}')


def test_registry_addresses(tmp_path: Path) -> None:
    with RegistryServer() as server:
        port = server.url.rsplit(":", 1)[1]
        http = registry_at(f"http://user:s%3Acret@127.0.0.1:{port}")
        assert isinstance(http, HttpSchemaRegistry)
        assert http.register("lines", avro_schema(Line)) == 1  # the credentials are no URL part
    assert redacted("https://user:secret@sr.example:8081/x") == "https://user:***@sr.example:8081/x"
    assert isinstance(registry_at(str(tmp_path / "r.json")), FileSchemaRegistry)
    path = tmp_path / "r.json"
    registry_at(f"file://{path}").register("lines", avro_schema(Line))
    assert FileSchemaRegistry(path).latest("lines")[0] == 1
    with pytest.raises(ValueError, match="expected http"):
        registry_at("ftp://example.com")


def test_schema_references(tmp_path: Path) -> None:
    schema = avro_schema(Line)
    assert load_schema(json.dumps(schema)) == schema
    path = tmp_path / "line.avsc"
    path.write_text(json.dumps(schema))
    assert load_schema(str(path)) == schema
    assert load_schema("orders-value") is None  # a subject
    with pytest.raises(ValueError, match="not a valid Avro schema"):
        load_schema('{"type": "no-such-type"}')
    with pytest.raises(ValueError, match=r"missing\.avsc"):
        load_schema(str(tmp_path / "missing.avsc"))
