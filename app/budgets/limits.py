"""Limits from outside (admin API, CLI) validated, and limits as the stores hold them.

A team or key with no limits (every field ``None``) is unlimited: requests are admitted without
touching the store at all. A limit of ``0`` is a real limit: nothing is admitted in that window.

In the stores a set of limits is a vector of six integers in ``KINDS`` order (``-1`` = no limit),
USD limits in whole micro-dollars (rounded down).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from typing import Any

from app.auth.principal import Limits
from app.budgets.windows import WINDOW_NAMES, limit_usd_to_micros, micros_to_usd

MAX_TOKEN_LIMIT = 10**15  # a quadrillion tokens: beyond any real budget
MAX_REQUEST_LIMIT = 10**15
MAX_USD_LIMIT = Decimal(10**9)
USD_DECIMAL_PLACES = 6  # budgets count micro-dollars
_MICRO = Decimal("0.000001")
_INTEGER = re.compile(r"[+-]?[0-9]+")
UNLIMITED = -1

_INT_FIELDS = ("requests_per_minute", "tokens_per_minute", "tokens_per_day", "tokens_per_month")
_USD_FIELDS = ("usd_per_day", "usd_per_month")
# A vector can carry a limit at most this large: above it the Lua arithmetic (IEEE doubles) would lose
# whole units. Larger limits (from an older schema) are clamped: they are unlimited in practice.
_MAX_VECTOR_VALUE = 2**52


class InvalidLimits(ValueError):
    """A limit is negative, absurd, malformed or names an unknown window."""


def validate_limits(data: Mapping[str, Any]) -> Limits:
    """Check limits given by a person (JSON body, CLI flags) and return them as ``Limits``.

    Accepts the six window names; ``None`` (or absence) means unlimited in that window. Token and
    request limits are whole numbers 0..10^15; USD limits are decimals (strings, ints or Decimals;
    floats are accepted through their shortest repr) 0..10^9 with at most six decimal places.
    """
    if not isinstance(data, Mapping):
        raise InvalidLimits("limits must be an object mapping window names to numbers")
    unknown = sorted(set(data) - set(WINDOW_NAMES))
    if unknown:
        raise InvalidLimits(
            f"unknown limit window {', '.join(repr(u) for u in unknown)}; "
            f"known windows: {', '.join(WINDOW_NAMES)}"
        )
    values: dict[str, Any] = {}
    for name in _INT_FIELDS:
        values[name] = _whole(name, data.get(name))
    for name in _USD_FIELDS:
        values[name] = _usd(name, data.get(name))
    return Limits(**values)


def _whole(name: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, str) and _INTEGER.fullmatch(value.strip()):
            value = int(value.strip())
        else:
            raise InvalidLimits(f"{name} must be a whole number or null, got {value!r}")
    if value < 0:
        raise InvalidLimits(f"{name} must not be negative (got {value}); use null for unlimited")
    cap = MAX_REQUEST_LIMIT if name == "requests_per_minute" else MAX_TOKEN_LIMIT
    if value > cap:
        raise InvalidLimits(f"{name} of {value} is absurd (more than {cap:.0e}); use null for unlimited")
    return int(value)


def _usd(name: str, value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        raise InvalidLimits(f"{name} must be a decimal amount of USD or null, got {value!r}")
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidLimits(f"{name} must be a finite amount of USD, got {value!r}")
        value = repr(value)
    try:
        amount = Decimal(str(value).strip()) if isinstance(value, (str, int, Decimal)) else None
    except InvalidOperation:
        amount = None
    if amount is None or not amount.is_finite():
        raise InvalidLimits(f"{name} must be a decimal amount of USD or null, got {value!r}")
    if amount < 0:
        raise InvalidLimits(f"{name} must not be negative (got {amount}); use null for unlimited")
    if amount > MAX_USD_LIMIT:
        raise InvalidLimits(f"{name} of {amount} USD is absurd (more than {MAX_USD_LIMIT}); use null")
    if amount != amount.quantize(_MICRO):
        raise InvalidLimits(
            f"{name} has more than {USD_DECIMAL_PLACES} decimal places (budgets count micro-USD)"
        )
    return format(amount.normalize(), "f")


@lru_cache(maxsize=16_384)
def limits_vector(limits: Limits) -> tuple[int, ...]:
    """``Limits`` → six integers in ``KINDS`` order, ``-1`` for unlimited, USD in micro-dollars."""

    def whole(v: int | None) -> int:
        return UNLIMITED if v is None else min(int(v), _MAX_VECTOR_VALUE)

    def usd(v: str | None) -> int:
        return UNLIMITED if v is None else min(limit_usd_to_micros(Decimal(v)), _MAX_VECTOR_VALUE)

    return (
        whole(limits.requests_per_minute),
        whole(limits.tokens_per_minute),
        whole(limits.tokens_per_day),
        whole(limits.tokens_per_month),
        usd(limits.usd_per_day),
        usd(limits.usd_per_month),
    )


def limits_from_vector(vector: tuple[int, ...]) -> Limits:
    def whole(v: int) -> int | None:
        return None if v < 0 else v

    def usd(v: int) -> str | None:
        return None if v < 0 else format(micros_to_usd(v).normalize(), "f")

    return Limits(
        requests_per_minute=whole(vector[0]),
        tokens_per_minute=whole(vector[1]),
        tokens_per_day=whole(vector[2]),
        tokens_per_month=whole(vector[3]),
        usd_per_day=usd(vector[4]),
        usd_per_month=usd(vector[5]),
    )


NO_LIMITS: tuple[int, ...] = (UNLIMITED,) * 6
