"""Kafka clusters and subscriptions: one pydantic model behind the admin API, the CLI and the
declarations file. Errors name the field and say what is expected."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from sluice.broker.partition._outbox import EgressTarget, OutputFormat
from sluice.broker.partition.lifecycle.kafka import source_cluster
from sluice.connectors.serde import AvroSerde, Serde, load_schema, redacted, registry_at, serde_for
from sluice.protocol import Header

_HOSTNAME = re.compile(
    r"^[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?(\.[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?)*$"
)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")

# librdkafka properties whose values are secrets: never echoed back by the admin API.
SECRET_PROPERTIES = (
    "sasl.password",
    "ssl.key.password",
    "ssl.keystore.password",
    "sasl.oauthbearer.client.secret",
)


class KafkaCluster(BaseModel):
    """A named Kafka cluster: librdkafka properties shared by every subscription to it."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="a hostname-like name, used in kafka://NAME/TOPIC sources")
    properties: dict[str, str] = Field(description="librdkafka properties, with bootstrap.servers")
    schema_registry: str | None = Field(
        None,
        description="where Avro schemas live: http(s)://[USER:PASSWORD@]HOST[:PORT] for a "
        "Schema Registry, or the path of a registry file",
    )
    created_at: int = 0

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _HOSTNAME.match(v):
            raise ValueError(f"{v!r} is not a valid cluster name (letters, digits, '-' and '.')")
        return v

    @field_validator("schema_registry")
    @classmethod
    def _registry(cls, v: str | None) -> str | None:
        return _registry_address(v)

    @field_validator("properties", mode="before")
    @classmethod
    def _props(cls, v: Any) -> Any:
        if isinstance(v, dict):
            v = {str(k): (str(x).lower() if isinstance(x, bool) else str(x)) for k, x in v.items()}
            if "bootstrap.servers" not in v and "metadata.broker.list" not in v:
                raise ValueError("must contain 'bootstrap.servers' (host:port,...)")
        return v

    def public(self) -> dict[str, Any]:
        props = {k: ("***" if k in SECRET_PROPERTIES else v) for k, v in self.properties.items()}
        out: dict[str, Any] = {"name": self.name, "properties": props}
        if self.schema_registry:
            out["schema_registry"] = redacted(self.schema_registry)
        return {**out, "created_at": str(self.created_at)}


def _registry_address(v: str | None) -> str | None:
    if v is not None:
        v = v.strip()
        if not v:
            return None
        registry_at(v)  # ValueError: not an address it understands
    return v


# Subscription settings that Sluice reads from Restate-shaped ``options`` (the rest of the
# options are librdkafka consumer properties).
SLUICE_OPTIONS = (
    "name",
    "serde",
    "input_schema",
    "dead_letter_topic",
    "max_in_flight",
    "key_encoding",
    "max_record_bytes",
    "from",
    "paused",
    "output_topic",
    "output_cluster",
    "output_headers",
    "output_serde",
    "output_schema",
    "schema_registry",
    "batch_max_records",
    "batch_max_ms",
    "on_topic_reset",
)


class Subscription(BaseModel):
    """Records of a Kafka topic become invocations of one handler.

    ``serde``: how a record value becomes the handler input ("json": must parse as JSON;
    "raw": bytes as they are; "avro": Schema Registry wire format, read with the writer
    schema of its id, or resolved against ``input_schema``, and given to the handler as
    JSON). ``dead_letter_topic``: where undecodable records and records
    whose invocation failed terminally go (same cluster); without it they become failed
    invocations listed by the admin API. ``max_in_flight``: the subscription stops reading
    while this many of its invocations are unfinished. ``key_encoding``: "base64" maps a
    key that is not UTF-8 to ``b64:<base64>``, "strict" dead-letters it. ``start``: where
    to begin when Sluice has no position for a partition and Kafka has no committed offset.
    """

    model_config = ConfigDict(extra="forbid")

    name: str = Field(default_factory=lambda: "sub-" + os.urandom(6).hex())
    source: str = Field(description="kafka://CLUSTER/TOPIC")
    sink: str = Field(description="service://SERVICE/HANDLER")
    options: dict[str, str] = Field(
        default_factory=dict, description="librdkafka consumer properties"
    )
    serde: Literal["json", "raw", "avro"] = "json"
    # serde "avro": the reader schema (inline JSON, a .avsc/.json file, or a subject whose
    # latest schema is used); None: each record's writer schema.
    input_schema: str | None = None
    dead_letter_topic: str | None = None
    max_in_flight: int = Field(1000, ge=1, le=1_000_000)
    key_encoding: Literal["base64", "strict"] = "base64"
    max_record_bytes: int = Field(1_048_576, ge=1)
    start: Literal["earliest", "latest"] = "earliest"
    # Created with from=earliest: positions were forgotten, and offsets committed to Kafka
    # under the group id (by the earlier subscription) must not be used either.
    ignore_committed: bool = False
    paused: bool = False
    # Egress (docs: the Kafka guide): the handler's result goes to ``output_topic`` on
    # ``output_cluster`` (default: the source cluster), keyed by the input key, in input order.
    output_topic: str | None = None
    output_cluster: str | None = None
    output_headers: dict[str, str] = Field(default_factory=dict)
    # "avro": results leave as Avro records in the Schema Registry wire format, written with
    # ``output_schema`` (inline JSON, a .avsc/.json file, or a subject; default: the latest
    # schema of subject OUTPUT_TOPIC-value) from ``schema_registry`` (default: the output
    # cluster's; for serde "avro", the source cluster's). A result that does not fit is
    # dead-lettered, the rest leave exactly once.
    output_serde: Literal["json", "avro"] = "json"
    output_schema: str | None = None
    schema_registry: str | None = None
    # A stream handler: one invocation per up to this many records of one partition; its
    # input is {"topic", "partition", "records": [...]}, its result a list of records.
    # None: as the handler declares (sdk.Batch, handler metadata), else one per record;
    # 0: one invocation per record, whatever the handler declares.
    batch_max_records: int | None = Field(None, ge=0, le=100_000)
    # ... or as many as arrived within this many milliseconds (one consume call); None: as
    # the handler declares, else 100.
    batch_max_ms: int | None = Field(None, ge=1, le=60_000)
    # The topic was deleted and created again under the subscription (its id changed, or
    # its end is below the subscription's position): "restart" reads the new topic from its
    # start (new invocation ids: offsets begin again); "stop" stops the subscription, with
    # the reason in its status, until an operator resumes it (POST .../resume: then it
    # starts over the same way) or deletes it. Never a silent skip (docs/kafka.md).
    on_topic_reset: Literal["restart", "stop"] = "restart"
    created_at: int = 0
    origin: Literal["api", "file"] = "api"  # "file": deleted when the file no longer declares it

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME.match(v):
            raise ValueError(
                f"{v!r} is not a valid subscription name (letters, digits, '.', '_', '-')"
            )
        return v

    @field_validator("source")
    @classmethod
    def _source(cls, v: str) -> str:
        m = re.match(r"^kafka://([^/]+)/([^/]+)$", v)
        if not m:
            raise ValueError(f"{v!r}: expected kafka://CLUSTER/TOPIC")
        return v

    @field_validator("sink")
    @classmethod
    def _sink(cls, v: str) -> str:
        m = re.match(r"^service://([^/]+)/([^/]+)$", v)
        if not m:
            raise ValueError(f"{v!r}: expected service://SERVICE/HANDLER")
        return v

    @field_validator("schema_registry")
    @classmethod
    def _registry(cls, v: str | None) -> str | None:
        return _registry_address(v)

    @field_validator("output_schema", "input_schema")
    @classmethod
    def _schema(cls, v: str | None) -> str | None:
        if v is not None and v.strip():
            load_schema(v)  # ValueError: an invalid inline schema, a missing or bad file
            return v.strip()
        return None

    @model_validator(mode="after")
    def _formats(self) -> Subscription:
        if self.output_serde != "json" and not self.output_topic:
            raise ValueError(f"output_serde {self.output_serde!r} needs an output_topic")
        if self.output_schema and self.output_serde != "avro":
            raise ValueError("output_schema is for output_serde 'avro'")
        if self.input_schema and self.serde != "avro":
            raise ValueError("input_schema is for serde 'avro'")
        return self

    def input_serde(self, cluster: KafkaCluster) -> Serde:
        """How the consumer decodes record values. ``ValueError`` says why it cannot: Avro
        with no registry on the subscription or on its source cluster, or an input schema
        file that went away since the subscription was created."""
        if self.serde != "avro":
            return serde_for(self.serde)
        address = self.schema_registry or cluster.schema_registry
        if not address:
            raise ValueError(
                "serde 'avro' needs a schema registry: set schema_registry on the "
                f"subscription or on kafka cluster '{self.cluster}'"
            )
        registry = registry_at(address)
        schema = load_schema(self.input_schema) if self.input_schema else None
        if self.input_schema and schema is None:  # a subject: its latest schema, read once
            return AvroSerde(registry, self.input_schema, read_latest=True)
        return AvroSerde(registry, f"{self.topic}-value", schema)

    @field_validator("output_headers", mode="before")
    @classmethod
    def _output_headers(cls, v: Any) -> Any:
        """A mapping, or its string form: JSON, or ``name=value,name=value``."""
        if isinstance(v, str):
            text = v.strip()
            if text.startswith("{"):
                return json.loads(text)
            out = {}
            for item in filter(None, (x.strip() for x in text.split(","))):
                name, sep, value = item.partition("=")
                if not sep:
                    raise ValueError(f"{item!r}: expected name=value")
                out[name.strip()] = value.strip()
            return out
        return v

    def egress_target(self) -> EgressTarget | None:
        """Where results go (KafkaIngest.output), or None."""
        if not self.output_topic:
            return None
        fmt = None
        if self.output_serde == "avro":
            fmt = OutputFormat(
                serde="avro",
                schema=self.output_schema or f"{self.output_topic}-value",
                subject=f"{self.output_topic}-value",
                registry=self.schema_registry or "",
                subscription=self.name,
                dead_letter_topic=self.dead_letter_topic or "",
            )
        return EgressTarget(
            cluster=self.output_cluster or self.cluster,
            topic=self.output_topic,
            headers=[Header(key=k, value=v) for k, v in self.output_headers.items()],
            format=fmt,
        )

    @field_validator("options", mode="before")
    @classmethod
    def _options(cls, v: Any) -> Any:
        if isinstance(v, dict):
            return {
                str(k): (str(x).lower() if isinstance(x, bool) else str(x)) for k, x in v.items()
            }
        return v

    @model_validator(mode="after")
    def _no_group_conflict(self) -> Subscription:
        bad = [k for k in ("enable.auto.commit", "enable.auto.offset.store") if k in self.options]
        if bad:
            raise ValueError(
                f"options {bad} are managed by Sluice (offsets commit after the log write)"
            )
        return self

    @property
    def id(self) -> str:
        """Stable for a name: re-creating a subscription gives the same id."""
        digest = hashlib.blake2b(self.name.encode(), digest_size=10).digest()
        return "sub_" + base64.b32encode(digest).decode().lower().rstrip("=")

    @property
    def cluster(self) -> str:
        return source_cluster(self.source)

    @property
    def topic(self) -> str:
        return self.source[len("kafka://") :].split("/", 1)[1]

    @property
    def service(self) -> str:
        return self.sink[len("service://") :].split("/", 1)[0]

    @property
    def handler(self) -> str:
        return self.sink[len("service://") :].split("/", 1)[1]

    @property
    def batch_wait_ms(self) -> int:
        """How long a stream handler's consumer waits to fill a batch."""
        return self.batch_max_ms or 100

    def with_handler_batch(self, metadata: dict[str, str]) -> Subscription:
        """This subscription with the batching its handler declares (``sdk.Batch``: the
        handler metadata ``sluice.batch.max_records`` and ``sluice.batch.max_ms``) where it
        sets none itself. ``ValueError`` names a declaration that is not a valid setting."""
        update: dict[str, Any] = {}
        for field_name, key in (
            ("batch_max_records", "sluice.batch.max_records"),
            ("batch_max_ms", "sluice.batch.max_ms"),
        ):
            if getattr(self, field_name) is None and key in metadata:
                update[field_name] = metadata[key]
        if "batch_max_records" not in update:
            return self
        try:
            return self.model_validate({**self.model_dump(), **update})
        except ValueError as e:
            raise ValueError(f"the handler's batch declaration {update}: {e}") from None

    @property
    def group_id(self) -> str:
        return self.options.get("group.id", f"sluice-{self.name}")

    def definition(self) -> dict[str, Any]:
        """What decides the running consumer: everything but pause state and timestamps."""
        return self.model_dump(exclude={"paused", "created_at", "origin"})

    def public(self) -> dict[str, Any]:
        """Restate's shape (id, source, sink, options as strings), plus Sluice's fields."""
        opts = dict(self.options)
        opts.update(
            {
                "name": self.name,
                "serde": self.serde,
                "max_in_flight": str(self.max_in_flight),
                "key_encoding": self.key_encoding,
                "max_record_bytes": str(self.max_record_bytes),
            }
        )
        if self.input_schema:
            opts["input_schema"] = self.input_schema
        if self.dead_letter_topic:
            opts["dead_letter_topic"] = self.dead_letter_topic
        if self.output_topic:
            opts["output_topic"] = self.output_topic
            opts["output_cluster"] = self.output_cluster or self.cluster
            if self.output_headers:
                opts["output_headers"] = json.dumps(self.output_headers)
            opts["output_serde"] = self.output_serde
            if self.output_schema:
                opts["output_schema"] = self.output_schema
        if self.schema_registry:
            opts["schema_registry"] = redacted(self.schema_registry)
        if self.batch_max_records is not None:
            opts["batch_max_records"] = str(self.batch_max_records)
        if self.batch_max_ms is not None:
            opts["batch_max_ms"] = str(self.batch_max_ms)
        opts["on_topic_reset"] = self.on_topic_reset
        return {
            "id": self.id,
            "name": self.name,
            "source": self.source,
            "sink": self.sink,
            "options": opts,
            "paused": self.paused,
        }

    @classmethod
    def from_request(cls, body: dict[str, Any]) -> tuple[Subscription, bool]:
        """A Restate-shaped create request; returns the model and whether ``from=earliest``
        asked to forget what an earlier subscription of the same name ingested."""
        options = dict(body.get("options") or {})
        fields: dict[str, Any] = {"source": body.get("source"), "sink": body.get("sink")}
        for k in SLUICE_OPTIONS:
            for spelling in (k, k.replace("_", "-"), k.replace("_", ".")):
                if spelling in options:
                    fields[k] = options.pop(spelling)
        if "name" in body:
            fields["name"] = body["name"]
        reset = False
        frm = fields.pop("from", None)
        if frm is not None:
            if frm not in ("earliest", "latest"):
                raise ValueError(f"from: {frm!r}, expected 'earliest' or 'latest'")
            fields["start"] = frm
            reset = frm == "earliest"
            fields["ignore_committed"] = reset
        elif options.get("auto.offset.reset") in ("earliest", "latest", "smallest", "largest"):
            fields["start"] = (
                "earliest" if options["auto.offset.reset"] in ("earliest", "smallest") else "latest"
            )
        if "paused" in fields:
            fields["paused"] = str(fields["paused"]).lower() in ("1", "true", "yes")
        fields["options"] = options
        return cls.model_validate({k: v for k, v in fields.items() if v is not None}), reset


class LogDeclaration(BaseModel):
    """``[log]``: the broker's log in Kafka, as its ``--log*`` and ``--snapshot*`` flags (which
    win where both are given)."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(description="kafka://HOST:PORT[,HOST:PORT]/TOPIC")
    properties: dict[str, str] = Field(default_factory=dict)
    replication_factor: int | None = Field(None, ge=1, le=32)
    snapshots: str | None = None
    snapshot_endpoint: str | None = None
    snapshot_every_records: int | None = Field(None, ge=1)
    snapshot_interval_s: float | None = Field(None, gt=0)

    @field_validator("properties", mode="before")
    @classmethod
    def _strings(cls, v: Any) -> Any:
        return {k: str(x) for k, x in v.items()} if isinstance(v, dict) else v


class Declarations(BaseModel):
    """The declarations file: the log, clusters and subscriptions, applied at start."""

    model_config = ConfigDict(extra="forbid")

    log: LogDeclaration | None = None
    kafka_clusters: list[KafkaCluster] = Field(default_factory=list)
    subscriptions: list[Subscription] = Field(default_factory=list)

    @model_validator(mode="after")
    def _named(self) -> Declarations:
        names: set[str] = set()
        for i, s in enumerate(self.subscriptions):
            if "name" not in s.model_fields_set:
                raise ValueError(
                    f"subscriptions[{i}] needs a name: it identifies what was already ingested"
                )
            if s.name in names:
                raise ValueError(f"subscription name {s.name!r} is declared twice")
            names.add(s.name)
        return self
