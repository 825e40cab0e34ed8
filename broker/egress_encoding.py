"""Output formats on the way out: a row's values encoded (Avro) just before they are sent.

Encoding happens in the egress connector, not in the state machine, because it needs the
schema registry (I/O). It is repeatable: the same value and schema give the same bytes, so a
transaction retried after a crash sends what the first attempt would have. A value that does
not fit its schema is not sent: it comes back as a ``FailedRecord``, which the trim command
(EgressCommitted) dead-letters through the log. A registry that cannot be reached raises a
retriable ``RegistryError``: the sink retries, nothing is dead-lettered for it.
"""

from __future__ import annotations

from sluice.broker.partition._outbox import OutputFormat
from sluice.connectors.serde import (
    AvroSerde,
    DecodeError,
    SchemaRegistry,
    Serde,
    load_schema,
    registry_at,
)


class OutputEncoder:
    """Serdes per output format, and registries per address, made once per sink.

    ``cluster_registry``: the output cluster's registry address ("" when it has none), the
    default for formats that name none; the sink sets it before each batch of rows."""

    def __init__(self, cluster: str) -> None:
        self._cluster = cluster
        self.cluster_registry = ""
        self._serdes: dict[tuple[bytes, str], Serde] = {}
        self._registries: dict[str, SchemaRegistry] = {}

    def encode(self, fmt: OutputFormat, value: bytes | None) -> bytes | None:
        """``value`` (the handler's JSON) in the format; a null value (a tombstone) stays
        null. ``DecodeError``: it does not fit; ``RegistryError``: try again later."""
        if value is None:
            return None
        return self._serde(fmt).encode(value)

    def _serde(self, fmt: OutputFormat) -> Serde:
        # Keyed by the address too: a cluster's registry changed at run time takes effect.
        ident = (fmt.encode(), fmt.registry or self.cluster_registry)
        serde = self._serdes.get(ident)
        if serde is None:
            serde = self._serdes[ident] = self._make(fmt, ident[1])
        return serde

    def _make(self, fmt: OutputFormat, address: str) -> Serde:
        if fmt.serde != "avro":
            raise DecodeError(f"unknown output serde {fmt.serde!r}")
        if not address:
            raise DecodeError(
                f"no schema registry: set schema_registry on kafka cluster '{self._cluster}'"
                " or on the subscription"
            )
        registry = self._registries.get(address)
        if registry is None:
            try:
                registry = self._registries[address] = registry_at(address)
            except ValueError as exc:
                raise DecodeError(str(exc)) from None
        try:
            schema = load_schema(fmt.schema)
        except ValueError as exc:  # e.g. the schema file went away since the subscription
            raise DecodeError(str(exc)) from None
        # An inline or file schema is registered under the output topic's subject; a
        # subject name means that subject's latest schema.
        return AvroSerde(registry, fmt.subject if schema is not None else fmt.schema, schema)
