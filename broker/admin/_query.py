"""A small subset of restate's SQL introspection (``POST /query``), enough for tools and tests:

    SELECT <columns | *> FROM sys_invocation [WHERE col = 'v' [AND ...]] [LIMIT n]
    SELECT <columns | *> FROM state [WHERE service_name = 'S' AND service_key = 'k' ...]

Columns follow restate's names. Anything else is a 400 that says what is supported.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from typing import Any

from sluice.broker.ids import InvocationId
from sluice.broker.partition._records import Phase, Status
from sluice.broker.storage import Store

from ._pace import paced

_SQL = re.compile(
    r"^\s*select\s+(?P<cols>.+?)\s+from\s+(?P<table>\w+)"
    r"(?:\s+where\s+(?P<where>.+?))?(?:\s+limit\s+(?P<limit>\d+))?\s*;?\s*$",
    re.IGNORECASE | re.DOTALL,
)
_COND = re.compile(r"^\s*(\w+)\s*=\s*(?:'((?:[^']|'')*)'|(-?\d+))\s*$")

_STATUS = {
    Phase.SCHEDULED: "scheduled",
    Phase.INBOXED: "pending",
    Phase.INVOKED: "running",
    Phase.SUSPENDED: "suspended",
    Phase.BACKING_OFF: "backing-off",
    Phase.PAUSED: "paused",
    Phase.COMPLETED: "completed",
}


class QueryError(ValueError):
    pass


def _invocation_row(st: Status, partitions: int) -> dict[str, Any]:
    code = st.last_failure.partition("] ")[0]
    failure = st.failure
    iid = InvocationId(st.id)
    return {
        "id": str(iid),
        "partition_key": iid.partition_key,
        "partition": iid.partition_key % partitions,
        "target": f"{st.service}/{st.key + '/' if st.key else ''}{st.handler}",
        "target_service_name": st.service,
        "target_service_key": st.key or None,
        "target_handler_name": st.handler,
        "status": _STATUS.get(st.phase, "unknown"),
        "retry_count": st.retry_count,
        "last_failure": st.last_failure or None,
        "last_failure_error_code": code.lstrip("[") if st.last_failure else None,
        "last_failure_related_command_index": None,
        "idempotency_key": st.idempotency_key,
        "pinned_deployment_id": st.deployment_id or None,
        "journal_size": st.journal_len,
        "epoch": st.epoch,
        "created_at": st.created_at,
        "modified_at": st.modified_at,
        "completed_at": st.completed_at or None,
        "completion_result": (
            None if st.phase != Phase.COMPLETED else ("failure" if failure else "success")
        ),
        "completion_failure": f"[{failure.code}] {failure.message}" if failure else None,
    }


def _invocations(store: Store, partitions: int) -> Iterator[dict[str, Any]]:
    for _, raw in store.scan("status", b""):
        yield _invocation_row(Status.decode(raw), partitions)


def _state(store: Store, partitions: int) -> Iterator[dict[str, Any]]:
    for k, v in store.scan("state", b""):
        pos = 0
        parts = []
        for _ in range(2):
            n = int.from_bytes(k[pos : pos + 4], "big")
            parts.append(k[pos + 4 : pos + 4 + n].decode("utf-8", "replace"))
            pos += 4 + n
        yield {
            "service_name": parts[0],
            "service_key": parts[1],
            "key": k[pos:].decode("utf-8", "replace"),
            "value_utf8": v.decode("utf-8", "replace"),
            "value": v.hex(),
        }


TABLES = {"sys_invocation": _invocations, "state": _state}


async def run_query(
    store: Store, sql: str, *, partitions: int = 1
) -> AsyncIterator[dict[str, Any]]:
    """The rows the query selects, as they are read (a bad query raises QueryError first)."""
    m = _SQL.match(sql)
    if m is None:
        raise QueryError(
            "supported: SELECT cols FROM sys_invocation|state [WHERE col = 'v' [AND ...]] [LIMIT n]"
        )
    table = m["table"].lower()
    if table not in TABLES:
        raise QueryError(f"unknown table {m['table']!r}; supported: {', '.join(TABLES)}")
    conds: list[tuple[str, Any]] = []
    if m["where"]:
        for part in re.split(r"\s+and\s+", m["where"], flags=re.IGNORECASE):
            c = _COND.match(part)
            if c is None:
                raise QueryError(
                    f"unsupported condition {part.strip()!r}: only col = 'value' joined by AND"
                )
            conds.append((c[1].lower(), c[2].replace("''", "'") if c[2] is not None else int(c[3])))
    cols = [c.strip() for c in m["cols"].split(",")]
    limit = int(m["limit"]) if m["limit"] else None
    n = 0
    async for row in paced(TABLES[table](store, partitions)):  # a whole table: share the loop
        if all(row.get(k) == v for k, v in conds):
            if cols != ["*"]:
                missing = [c for c in cols if c not in row]
                if missing:
                    raise QueryError(f"unknown column {missing[0]!r} in {table}")
            yield row if cols == ["*"] else {c: row[c] for c in cols}
            n += 1
            if limit is not None and n >= limit:
                break
