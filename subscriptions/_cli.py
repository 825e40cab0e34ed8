"""``sluice kafka-clusters ...`` and ``sluice subscriptions ...``: the admin API from a shell."""

from __future__ import annotations

import argparse
import urllib.parse
from collections.abc import Callable
from typing import Any


def _admin(args: argparse.Namespace, method: str, path: str, body: Any = None) -> Any:
    from sluice.broker.cli import _admin as call  # lazy: broker.cli imports this module

    return call(args, method, path, body)


def _pairs(items: list[str] | None, flag: str) -> dict[str, str]:
    from sluice.broker.cli import CliError  # lazy: broker.cli imports this module

    out = {}
    for item in items or []:
        k, sep, v = item.partition("=")
        if not sep or not k:
            raise CliError(f"{flag} {item!r}: expected KEY=VALUE")
        out[k] = v
    return out


def _clusters(args: argparse.Namespace) -> None:
    if args.action == "create":
        props = {"bootstrap.servers": args.bootstrap, **_pairs(args.property, "--property")}
        body = {"name": args.name, "properties": props}
        if args.schema_registry:
            body["schema_registry"] = args.schema_registry
        _admin(args, "POST", "/kafka-clusters", body)
        print(f"created kafka cluster {args.name} ({args.bootstrap})")
    elif args.action == "list":
        rows = _admin(args, "GET", "/kafka-clusters")["clusters"]
        for c in rows:
            servers = c["properties"].get("bootstrap.servers", "")
            print(f"{c['name']}  {servers}")
        if not rows:
            print("no kafka clusters")
    elif args.action == "delete":
        _admin(args, "DELETE", f"/kafka-clusters/{urllib.parse.quote(args.name)}")
        print(f"deleted kafka cluster {args.name}")


def _subscriptions(args: argparse.Namespace) -> None:
    if args.action == "create":
        options = _pairs(args.option, "--option")
        for flag, key in (
            ("name", "name"),
            ("serde", "serde"),
            ("input_schema", "input_schema"),
            ("schema_registry", "schema_registry"),
            ("dead_letter_topic", "dead_letter_topic"),
            ("max_in_flight", "max_in_flight"),
            ("key_encoding", "key_encoding"),
            ("max_record_bytes", "max_record_bytes"),
            ("from_", "from"),
        ):
            value = getattr(args, flag)
            if value is not None:
                options[key] = str(value)
        out = _admin(
            args,
            "POST",
            "/subscriptions",
            {"source": args.source, "sink": args.sink, "options": options},
        )
        print(f"created subscription {out['name']} ({out['id']}): {out['source']} -> {out['sink']}")
    elif args.action == "list":
        rows = _admin(args, "GET", "/subscriptions")["subscriptions"]
        for s in rows:
            st = s.get("status", {})
            print(f"{s['name']}  {s['id']}  {s['source']} -> {s['sink']}  [{st.get('state', '?')}]")
            for p in st.get("partitions", []):
                print(
                    f"    partition {p['partition']}: ingested {p['ingested']}, lag {p['lag']}, "
                    f"dead-lettered {p['dead_lettered']}, position {p['position']}"
                )
        if not rows:
            print("no subscriptions")
    else:
        ref = urllib.parse.quote(args.subscription)
        if args.action == "delete":
            _admin(args, "DELETE", f"/subscriptions/{ref}")
            print(f"deleted subscription {args.subscription}")
        else:
            _admin(args, "POST", f"/subscriptions/{ref}/{args.action}")
            print(f"{args.action}d subscription {args.subscription}")


def add_commands(client: Callable[[str, str], argparse.ArgumentParser]) -> None:
    """Add the two command groups; ``client`` makes a subcommand with --admin-url."""
    k = client("kafka-clusters", "create, list and delete Kafka clusters")
    ksub = k.add_subparsers(dest="action", required=True)
    c = ksub.add_parser("create")
    c.add_argument("name")
    c.add_argument("--bootstrap", required=True, help="bootstrap.servers, host:port[,host:port]")
    c.add_argument("--property", action="append", metavar="KEY=VALUE", help="librdkafka property")
    c.add_argument(
        "--schema-registry", help="http(s)://HOST:PORT of a Schema Registry, or a registry file"
    )
    ksub.add_parser("list")
    d = ksub.add_parser("delete")
    d.add_argument("name")
    k.set_defaults(fn=_clusters)

    s = client("subscriptions", "create, list, delete, pause and resume Kafka subscriptions")
    ssub = s.add_subparsers(dest="action", required=True)
    c = ssub.add_parser("create")
    c.add_argument("--name", help="stable name: it identifies what was already ingested")
    c.add_argument("--source", required=True, help="kafka://CLUSTER/TOPIC")
    c.add_argument("--sink", required=True, help="service://SERVICE/HANDLER")
    c.add_argument("--serde", choices=["json", "raw", "avro"])
    c.add_argument(
        "--input-schema",
        help="serde avro: the reader schema (inline JSON, a .avsc file, or a registry subject)",
    )
    c.add_argument(
        "--schema-registry",
        help="http(s)://HOST:PORT or a registry file (default: the cluster's schema registry)",
    )
    c.add_argument("--dead-letter-topic")
    c.add_argument("--max-in-flight", type=int)
    c.add_argument("--key-encoding", choices=["base64", "strict"])
    c.add_argument("--max-record-bytes", type=int)
    c.add_argument(
        "--from",
        dest="from_",
        choices=["earliest", "latest"],
        help="earliest: start over, even if a subscription of this name ingested the topic before",
    )
    c.add_argument("--option", action="append", metavar="KEY=VALUE", help="librdkafka property")
    ssub.add_parser("list")
    for name in ("delete", "pause", "resume"):
        x = ssub.add_parser(name)
        x.add_argument("subscription", help="name or id")
    s.set_defaults(fn=_subscriptions)
