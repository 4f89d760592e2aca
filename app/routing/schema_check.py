"""Does a structured-output answer match the JSON schema the client asked for? (``jsonschema``)

The full standard (``pattern``, ``minimum``, ``format``, ``$ref`` …) through the maintained
``jsonschema`` package, with the draft the schema declares (2020-12 when it declares none) and
format checking on. A schema that is itself invalid cannot judge an answer: it never fails one.
Validators are compiled once per distinct schema (an LRU keyed by the schema's canonical JSON).
"""

from __future__ import annotations

import functools
from typing import Any

import orjson
from jsonschema import Draft202012Validator, validators
from jsonschema.exceptions import SchemaError, best_match
from jsonschema.protocols import Validator


@functools.lru_cache(maxsize=256)
def _validator(schema_json: bytes) -> Validator | None:
    schema = orjson.loads(schema_json)
    cls = validators.validator_for(schema, default=Draft202012Validator)
    try:
        cls.check_schema(schema)
    except SchemaError:
        return None
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


def schema_mismatch(document: Any, schema: dict[str, Any]) -> str | None:
    """None when ``document`` matches ``schema``; else where and why it does not (``$.a[0]: …``)."""
    try:
        validator = _validator(orjson.dumps(schema, option=orjson.OPT_SORT_KEYS))
    except (TypeError, orjson.JSONEncodeError):
        return None
    if validator is None:
        return None
    error = best_match(validator.iter_errors(document))
    return None if error is None else f"{error.json_path}: {error.message}"
