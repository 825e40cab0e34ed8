"""The declarations file: valid TOML and YAML load into the same models; invalid files fail
with FILE:LINE: reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from sluice.subscriptions import DeclarationError, Subscription, load_declarations

TOML = """\
[[kafka_clusters]]
name = "local"
properties = { "bootstrap.servers" = "127.0.0.1:9092" }

[[subscriptions]]
name = "orders"
source = "kafka://local/orders"
sink = "service://Orders/process"
dead_letter_topic = "orders-dlq"
max_in_flight = 50

[subscriptions.options]
"auto.offset.reset" = "earliest"
"""

YAML = """\
kafka_clusters:
  - name: local
    properties: {bootstrap.servers: "127.0.0.1:9092"}
subscriptions:
  - name: orders
    source: kafka://local/orders
    sink: service://Orders/process
    dead_letter_topic: orders-dlq
    max_in_flight: 50
    options: {auto.offset.reset: earliest}
"""


def test_toml_and_yaml_give_the_same_declarations(tmp_path: Path) -> None:
    (tmp_path / "sluice.toml").write_text(TOML)
    (tmp_path / "sluice.yaml").write_text(YAML)
    a = load_declarations(tmp_path / "sluice.toml")
    b = load_declarations(tmp_path / "sluice.yaml")
    assert a == b
    sub = a.subscriptions[0]
    assert (sub.cluster, sub.topic, sub.service, sub.handler) == (
        "local",
        "orders",
        "Orders",
        "process",
    )
    assert sub.max_in_flight == 50 and sub.serde == "json"


@pytest.mark.parametrize(
    ("name", "text", "where"),
    [
        (
            "bad.toml",
            TOML.replace("max_in_flight = 50", "max_in_flight = 0"),
            ":10: subscriptions.0.max_in_flight",
        ),
        (
            "bad.toml",
            TOML.replace('sink = "service://Orders/process"', 'sink = "Orders"'),
            ":8: subscriptions.0.sink",
        ),
        ("bad.toml", TOML.replace('"127.0.0.1:9092"', "127.0.0.1"), ":3: "),  # TOML syntax
        ("bad.toml", TOML.replace('name = "orders"\n', ""), ":5: subscriptions.0: needs a name"),
        ("bad.toml", "surprise = 1\n" + TOML, ":1: surprise: Extra inputs"),
        (
            "bad.toml",
            TOML.replace(
                "max_in_flight = 50", 'max_in_flight = 50\nserde = "avro"\ninput_schema = "{"'
            ),
            ":12: subscriptions.0.input_schema: inline schema is not JSON",
        ),
        (
            "bad.toml",
            TOML.replace("max_in_flight = 50", 'max_in_flight = 50\ninput_schema = "orders-value"'),
            ":5: subscriptions.0: input_schema is for serde 'avro'",
        ),
        (
            "bad.yaml",
            YAML.replace("max_in_flight: 50", "max_in_flight: lots"),
            ":9: subscriptions.0.max_in_flight",
        ),
        (
            "bad.yaml",
            YAML.replace("source: kafka://local/orders", "source: kafka:/x"),
            ":6: subscriptions.0.source",
        ),
        ("bad.yaml", YAML.replace("  - name: orders", "  - name: [orders"), ":6: "),  # YAML syntax
    ],
)
def test_invalid_files_name_file_line_and_reason(
    tmp_path: Path, name: str, text: str, where: str
) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(DeclarationError) as e:
        load_declarations(path)
    assert str(e.value).startswith(str(path) + where), str(e.value)


def test_restate_shaped_request_maps_sluice_options() -> None:
    sub, reset = Subscription.from_request(
        {
            "source": "kafka://c/t",
            "sink": "service://S/h",
            "options": {"name": "n", "serde": "raw", "from": "earliest", "fetch.min.bytes": "10"},
        }
    )
    assert reset and sub.start == "earliest" and sub.serde == "raw"
    assert sub.options == {"fetch.min.bytes": "10"}
    avro, _ = Subscription.from_request(
        {
            "source": "kafka://c/t",
            "sink": "service://S/h",
            "options": {
                "serde": "avro",
                "input-schema": " orders-value ",
                "schema_registry": "r.json",
            },
        }
    )
    assert (avro.serde, avro.input_schema, avro.schema_registry) == (
        "avro",
        "orders-value",
        "r.json",
    )
    assert avro.public()["options"]["input_schema"] == "orders-value" and not avro.options
    assert sub.id == Subscription(name="n", source="kafka://x/y", sink="service://A/b").id
