"""A small JSON-schema validator: the subset structured-output schemas use in practice.

Supported keywords: ``type`` (a name or a list of names), ``properties``, ``required``, ``items``
(one schema), ``enum``, ``const``, ``additionalProperties`` (``false`` or a schema), ``anyOf`` /
``oneOf`` (treated alike: at least one branch must match), ``minItems`` / ``maxItems``, and local
``$ref`` of the form ``#/$defs/Name`` or ``#/definitions/Name``. Unknown keywords are ignored, so a
schema using more of the standard is checked on the parts above and never wrongly rejected for the
rest.

Per the standard, ``integer`` accepts a float with no fractional part (``1.0``), and booleans are not
numbers even though Python's ``bool`` is an ``int``.
"""

from __future__ import annotations

from typing import Any

_MAX_DEPTH = 64


def _type_ok(value: Any, name: str) -> bool:
    if name == "object":
        return isinstance(value, dict)
    if name == "array":
        return isinstance(value, list)
    if name == "string":
        return isinstance(value, str)
    if name == "boolean":
        return isinstance(value, bool)
    if name == "null":
        return value is None
    if isinstance(value, bool):
        return False
    if name == "integer":
        return isinstance(value, int) or (isinstance(value, float) and value.is_integer())
    if name == "number":
        return isinstance(value, int | float)
    return True  # an unknown type name: do not reject


def _json_equal(a: Any, b: Any) -> bool:
    """JSON equality: ``true`` is not ``1`` (Python says it is), ``1`` is ``1.0``."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    return bool(a == b)


def _resolve(ref: str, root: dict[str, Any]) -> dict[str, Any] | None:
    for prefix in ("#/$defs/", "#/definitions/"):
        if ref.startswith(prefix):
            defs = root.get(prefix[2:-1])
            if isinstance(defs, dict):
                target = defs.get(ref[len(prefix) :])
                return target if isinstance(target, dict) else None
    return None


def validate(value: Any, schema: Any) -> str | None:
    """None when ``value`` matches ``schema``, else a short description of the first mismatch."""
    if not isinstance(schema, dict):
        return None
    return _check(value, schema, schema, "$", 0)


def _check(value: Any, schema: dict[str, Any], root: dict[str, Any], path: str, depth: int) -> str | None:
    if depth > _MAX_DEPTH:
        return None
    ref = schema.get("$ref")
    if isinstance(ref, str):
        target = _resolve(ref, root)
        if target is not None:
            error = _check(value, target, root, path, depth + 1)
            if error:
                return error

    expected = schema.get("type")
    if isinstance(expected, str):
        if not _type_ok(value, expected):
            return f"{path}: expected {expected}"
    elif isinstance(expected, list) and expected:
        if not any(_type_ok(value, t) for t in expected if isinstance(t, str)):
            return f"{path}: expected one of {', '.join(map(str, expected))}"

    if "const" in schema and not _json_equal(value, schema["const"]):
        return f"{path}: must equal {schema['const']!r}"
    enum = schema.get("enum")
    if isinstance(enum, list) and not any(_json_equal(value, option) for option in enum):
        return f"{path}: not one of the allowed values"

    for keyword in ("anyOf", "oneOf"):
        branches = schema.get(keyword)
        if isinstance(branches, list) and branches:
            if all(_check(value, b, root, path, depth + 1) for b in branches if isinstance(b, dict)):
                return f"{path}: matches none of the {keyword} branches"

    if isinstance(value, dict):
        error = _check_object(value, schema, root, path, depth)
        if error:
            return error
    elif isinstance(value, list):
        error = _check_array(value, schema, root, path, depth)
        if error:
            return error
    return None


def _check_object(
    value: dict[str, Any], schema: dict[str, Any], root: dict[str, Any], path: str, depth: int
) -> str | None:
    properties = schema.get("properties")
    properties = properties if isinstance(properties, dict) else {}
    required = schema.get("required")
    if isinstance(required, list):
        for name in required:
            if isinstance(name, str) and name not in value:
                return f"{path}: missing required property '{name}'"
    additional = schema.get("additionalProperties", True)
    for name, item in value.items():
        sub = properties.get(name)
        if isinstance(sub, dict):
            error = _check(item, sub, root, f"{path}.{name}", depth + 1)
            if error:
                return error
        elif additional is False:
            return f"{path}: unexpected property '{name}'"
        elif isinstance(additional, dict):
            error = _check(item, additional, root, f"{path}.{name}", depth + 1)
            if error:
                return error
    return None


def _check_array(
    value: list[Any], schema: dict[str, Any], root: dict[str, Any], path: str, depth: int
) -> str | None:
    min_items = schema.get("minItems")
    if isinstance(min_items, int) and len(value) < min_items:
        return f"{path}: fewer than {min_items} items"
    max_items = schema.get("maxItems")
    if isinstance(max_items, int) and len(value) > max_items:
        return f"{path}: more than {max_items} items"
    items = schema.get("items")
    if isinstance(items, dict):
        for index, item in enumerate(value):
            error = _check(item, items, root, f"{path}[{index}]", depth + 1)
            if error:
                return error
    return None
