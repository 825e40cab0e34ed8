"""Broker configuration: one pydantic model, validated, with errors that name the field."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field, field_validator, model_validator


class RetrySettings(BaseModel):
    initial_interval_ms: int = Field(50, ge=1)
    factor: float = Field(2.0, ge=1.0)
    max_interval_ms: int = Field(10_000, ge=1)
    max_attempts: int = Field(100, ge=1, description="then the invocation pauses")


class BrokerSettings(BaseModel):
    @model_validator(mode="after")
    def _snapshots_need_kafka(self) -> BrokerSettings:
        if self.snapshots is not None and self.log is None:
            raise ValueError("snapshots are for a broker on the Kafka log: give --log too")
        if self.snapshot_endpoint is not None and not (self.snapshots or "").startswith("s3://"):
            raise ValueError("--snapshot-endpoint is for snapshots in S3: --snapshots s3://...")
        return self

    @field_validator("log")
    @classmethod
    def _kafka_log(cls, url: str | None) -> str | None:
        if url is not None:
            from sluice.broker.log import KafkaLogAddress

            KafkaLogAddress.parse(url)  # a ValueError says what is wrong with it
        return url

    data_dir: Path = Path("./sluice-data")
    host: str = "127.0.0.1"
    ingress_port: int = Field(8080, ge=0, le=65535)
    admin_port: int = Field(9070, ge=0, le=65535)
    partitions: int = Field(8, ge=1, le=4096, description="fixed when the data dir is created")
    body_limit: int = Field(32 * 1024 * 1024, ge=1024, description="ingress request body bytes")
    read_timeout_s: float = Field(
        30.0,
        gt=0,
        description="seconds an HTTP client has to send a whole request (then 408), "
        "and that an idle connection stays open",
    )
    fsync: bool = Field(True, description="fdatasync the log before acknowledging anything")
    fatal_grace_s: float = Field(
        0.5,
        ge=0,
        description="after a log or storage failure, how long the 503 answers have to go out "
        "before the process exits with status 3 to be restarted",
    )
    retry: RetrySettings = Field(default_factory=RetrySettings)
    inactivity_timeout_s: float = Field(60.0, gt=0)
    abort_timeout_s: float = Field(60.0, gt=0)
    log_segment_bytes: int = Field(
        64 << 20, ge=4096, description="log segments roll over at this size"
    )
    max_concurrent_invocations: int = Field(0, ge=0, description="streaming at once; 0: no limit")
    admission_limit: int = Field(
        2_000,
        ge=0,
        description="invocations running or waiting to run, or HTTP requests and Kafka "
        "records admitted and unfinished, at which the ingress answers 503 with Retry-After "
        "and Kafka subscriptions stop reading; 0: no limit",
    )
    idempotency_retention_s: float = Field(86_400.0, ge=0)
    workflow_retention_s: float = Field(86_400.0, ge=0)
    completion_retention_s: float = Field(
        86_400.0, ge=0, description="how long any completed invocation stays attachable"
    )
    log: str | None = Field(
        None,
        description="kafka://HOST:PORT[,HOST:PORT]/TOPIC: the log in Kafka; None: embedded",
    )
    log_properties: dict[str, str] = Field(
        default_factory=dict, description="librdkafka properties for the log's clients"
    )
    log_replication_factor: int | None = Field(None, ge=1, le=32)
    snapshots: str | None = Field(
        None,
        description="a directory or s3://BUCKET/PREFIX for snapshots of the tables (Kafka log)",
    )
    snapshot_endpoint: str | None = Field(
        None, description="the endpoint URL of an S3-compatible store for s3:// snapshots"
    )
    snapshot_every_records: int = Field(50_000, ge=1, description="log records between two")
    snapshot_interval_s: float = Field(
        300.0, gt=0, description="seconds after which a snapshot is taken if anything changed"
    )
    declarations: Path | None = Field(
        None, description="sluice.toml or YAML: Kafka clusters and subscriptions, applied at start"
    )
