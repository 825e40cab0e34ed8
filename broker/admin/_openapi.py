"""The admin API's OpenAPI document (served at GET /openapi)."""

from __future__ import annotations

from typing import Any


def _op(
    summary: str, responses: dict[str, str], body: dict[str, Any] | None = None
) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": summary,
        "responses": {code: {"description": d} for code, d in responses.items()},
    }
    if body is not None:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    return op


_ID = [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}]

OPENAPI: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {"title": "Sluice admin API", "version": "0.1.0"},
    "paths": {
        "/health": {"get": _op("Liveness", {"200": "up"})},
        "/openapi": {"get": _op("This document", {"200": "OpenAPI 3 JSON"})},
        "/activity": {
            "get": _op(
                "The work left (records taken, appends not applied, invocations running,"
                " queued or waiting on a timer, outbox and dead-letter rows) and whether it"
                " is none (quiet)",
                {"200": "{quiet, log, invocations, subscriptions, egress, dead_letters}"},
            )
        },
        "/deployments": {
            "get": _op("List deployments", {"200": "deployments"}),
            "post": _op(
                "Register a deployment: discover its services and negotiate the protocol",
                {
                    "201": "registered",
                    "400": "bad request",
                    "409": "conflict",
                    "502": "discovery failed",
                },
                {
                    "type": "object",
                    "required": ["uri"],
                    "properties": {
                        "uri": {"type": "string"},
                        "use_http_11": {"type": "boolean", "default": False},
                        "force": {"type": "boolean", "default": True},
                        "additional_headers": {"type": "object"},
                    },
                },
            ),
        },
        "/deployments/{id}": {
            "parameters": _ID,
            "get": _op("Describe a deployment", {"200": "deployment", "404": "not found"}),
            "delete": _op("Remove a deployment", {"202": "removed", "404": "not found"}),
        },
        "/services": {"get": _op("List services", {"200": "services"})},
        "/services/{id}": {
            "parameters": _ID,
            "get": _op("Describe a service", {"200": "service", "404": "not found"}),
        },
        "/invocations": {
            "get": _op("List invocations (?status=&service=&limit=)", {"200": "invocations"})
        },
        "/invocations/{id}": {
            "parameters": _ID,
            "get": _op("Describe an invocation", {"200": "invocation", "404": "not found"}),
        },
        "/invocations/{id}/cancel": {
            "parameters": _ID,
            "patch": _op(
                "Cancel: the handler gets a CancelledError and may compensate",
                {"202": "accepted", "404": "not found"},
            ),
        },
        "/invocations/{id}/kill": {
            "parameters": _ID,
            "patch": _op(
                "Kill: stop at once, no compensation", {"202": "accepted", "404": "not found"}
            ),
        },
        "/invocations/{id}/purge": {
            "parameters": _ID,
            "patch": _op(
                "Forget a completed invocation", {"200": "purged", "409": "not completed"}
            ),
        },
        "/invocations/{id}/resume": {
            "parameters": _ID,
            "patch": _op("Resume a paused invocation", {"202": "accepted"}),
        },
        "/query": {
            "post": _op(
                "SQL subset: SELECT cols FROM sys_invocation|state "
                "[WHERE col = 'v' AND ...] [LIMIT n]",
                {"200": "{rows: [...]}", "400": "unsupported query"},
                {"type": "object", "properties": {"query": {"type": "string"}}},
            )
        },
        "/state/{service}/{key}": {
            "get": _op(
                "The state of one object or workflow key, JSON-decoded where possible",
                {"200": "state"},
            ),
        },
    },
}
