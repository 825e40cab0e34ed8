"""Input checks before anything is appended: JSON well-formedness and a handler's JSON schema
(the subset pydantic emits: type, properties, required, items, enum, $ref to $defs)."""

from __future__ import annotations

import json
from typing import Any

from sluice.broker.schema import HandlerInfo

_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "null": (type(None),),
}


def validate(handler: HandlerInfo, body: bytes, content_type: str | None) -> str | None:
    """None if the input is acceptable, else what is wrong with it."""
    spec = handler.input
    if not spec:
        return None
    expected = spec.get("contentType", "application/json")
    if not body:
        return "this handler requires an input body" if spec.get("required") else None
    if "json" not in str(expected):
        return None
    try:
        value = json.loads(body)
    except RecursionError:  # nesting deeper than the interpreter's limit (~1,000)
        return "the body is JSON nested too deeply"
    except ValueError as e:
        return f"the body is not valid JSON: {e}"
    schema = spec.get("jsonSchema")
    if not isinstance(schema, dict):
        return None
    return _check(value, schema, schema, "input")


def _check(value: Any, schema: dict[str, Any], root: dict[str, Any], where: str) -> str | None:
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/"):
        node: Any = root
        for part in ref[2:].split("/"):
            node = node.get(part, {}) if isinstance(node, dict) else {}
        return _check(value, node, root, where)
    for combinator in ("anyOf", "oneOf"):
        options = schema.get(combinator)
        if isinstance(options, list) and options:
            if all(
                _check(value, o, root, where) is not None for o in options if isinstance(o, dict)
            ):
                return f"{where}: does not match any allowed shape"
            return None
    ty = schema.get("type")
    if isinstance(ty, str) and ty in _TYPES:
        ok = isinstance(value, _TYPES[ty]) and not (
            ty in ("integer", "number") and isinstance(value, bool)
        )
        if ty == "integer" and isinstance(value, float) and value.is_integer():
            ok = True
        if not ok:
            return f"{where}: expected {ty}, got {type(value).__name__} {json.dumps(value)[:60]}"
    if "enum" in schema and value not in schema["enum"]:
        return f"{where}: must be one of {schema['enum']}"
    if isinstance(value, dict):
        for name in schema.get("required", []):
            if name not in value:
                return f"{where}: missing required field '{name}'"
        props = schema.get("properties", {})
        for name, sub in props.items():
            if name in value and isinstance(sub, dict):
                problem = _check(value[name], sub, root, f"{where}.{name}")
                if problem:
                    return problem
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            problem = _check(item, schema["items"], root, f"{where}[{i}]")
            if problem:
                return problem
    return None
