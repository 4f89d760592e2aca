"""Small strict readers for what an upstream sends: each checks one field's type and range.

The provider side of the wire modules reads every upstream reply and event through these before
anything trusts it. A failed check raises ``MalformedReply`` whose message is written here — the
field's path and what was expected, never the value the upstream sent — so it is safe to pass on.

Hand-written rather than pydantic models: an upstream reply is a few dozen fields, and plain
``isinstance`` checks cost about a microsecond per reply (``python -m bench.provider_bench``).
"""

from __future__ import annotations

from typing import Any

# A token count above this is not a count (10**9 tokens would be thousands of dollars per request).
MAX_TOKEN_COUNT = 1_000_000_000
MAX_INDEX = 1_000_000  # a content block or tool-call index


class MalformedReply(ValueError):
    """An upstream reply or event does not have the shape its wire format promises."""


def obj(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise MalformedReply(f"{where} must be an object")
    return value


def opt_obj(value: Any, where: str) -> dict[str, Any] | None:
    return None if value is None else obj(value, where)


def array(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise MalformedReply(f"{where} must be an array")
    return value


def opt_array(value: Any, where: str) -> list[Any]:
    return [] if value is None else array(value, where)


def string(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise MalformedReply(f"{where} must be a string")
    return value


def opt_string(value: Any, where: str) -> str | None:
    return None if value is None else string(value, where)


def count(value: Any, where: str, maximum: int = MAX_TOKEN_COUNT) -> int:
    """A non-negative integer no larger than ``maximum`` (booleans are not integers here)."""
    if type(value) is not int or not 0 <= value <= maximum:
        raise MalformedReply(f"{where} must be an integer between 0 and {maximum}")
    return value


def opt_count(value: Any, where: str, maximum: int = MAX_TOKEN_COUNT) -> int | None:
    return None if value is None else count(value, where, maximum)


def index(value: Any, where: str) -> int:
    return count(value, where, MAX_INDEX)
