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


def _path(where: str, field: str) -> str:
    return f"{where}.{field}" if field else where


# Each reader takes the value, where it sits (``where``, plus ``field`` when it is a named field: the
# path is only put together when the check fails, so a passing check allocates nothing).


def obj(value: Any, where: str, field: str = "") -> dict[str, Any]:
    if type(value) is not dict:
        raise MalformedReply(f"{_path(where, field)} must be an object")
    return value


def opt_obj(value: Any, where: str, field: str = "") -> dict[str, Any] | None:
    return None if value is None else obj(value, where, field)


def array(value: Any, where: str, field: str = "") -> list[Any]:
    if type(value) is not list:
        raise MalformedReply(f"{_path(where, field)} must be an array")
    return value


def opt_array(value: Any, where: str, field: str = "") -> list[Any]:
    return [] if value is None else array(value, where, field)


def string(value: Any, where: str, field: str = "") -> str:
    if type(value) is not str:
        raise MalformedReply(f"{_path(where, field)} must be a string")
    return value


def opt_string(value: Any, where: str, field: str = "") -> str | None:
    return None if value is None else string(value, where, field)


def count(value: Any, where: str, field: str = "", maximum: int = MAX_TOKEN_COUNT) -> int:
    """A non-negative integer no larger than ``maximum`` (booleans are not integers here)."""
    if type(value) is not int or not 0 <= value <= maximum:
        raise MalformedReply(f"{_path(where, field)} must be an integer between 0 and {maximum}")
    return value


def opt_count(value: Any, where: str, field: str = "") -> int | None:
    return None if value is None else count(value, where, field)


def index(value: Any, where: str, field: str = "index") -> int:
    return count(value, where, field, MAX_INDEX)
