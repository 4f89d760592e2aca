"""validate_limits: what the admin API and the CLI accept as limits, and what they refuse."""

from __future__ import annotations

from decimal import Decimal

import pytest

from app.auth.principal import Limits
from app.budgets.limits import InvalidLimits, limits_from_vector, limits_vector, validate_limits


def test_no_limits_means_unlimited() -> None:
    limits = validate_limits({})
    assert limits == Limits() and limits.is_unlimited()
    assert validate_limits({"tokens_per_day": None}).is_unlimited()
    assert limits_vector(limits) == (-1,) * 6


def test_valid_limits_are_normalised() -> None:
    limits = validate_limits(
        {
            "tokens_per_day": 5_000_000,
            "tokens_per_month": "100000000",
            "requests_per_minute": 0,
            "usd_per_day": 12.5,
            "usd_per_month": Decimal("250.000100"),
        }
    )
    assert limits == Limits(
        tokens_per_day=5_000_000,
        tokens_per_month=100_000_000,
        requests_per_minute=0,
        usd_per_day="12.5",
        usd_per_month="250.0001",
    )
    assert limits_vector(limits) == (0, -1, 5_000_000, 100_000_000, 12_500_000, 250_000_100)
    assert limits_from_vector(limits_vector(limits)) == limits


@pytest.mark.parametrize(
    ("data", "complaint"),
    [
        ({"tokens_per_day": -1}, "must not be negative"),
        ({"requests_per_minute": -5}, "must not be negative"),
        ({"usd_per_month": "-0.01"}, "must not be negative"),
        ({"tokens_per_month": 10**15 + 1}, "absurd"),
        ({"usd_per_day": "1000000001"}, "absurd"),
        ({"tokens_per_day": 1.5}, "whole number"),
        ({"tokens_per_day": True}, "whole number"),
        ({"tokens_per_day": "lots"}, "whole number"),
        ({"usd_per_day": "ten dollars"}, "decimal amount"),
        ({"usd_per_day": float("nan")}, "finite"),
        ({"usd_per_day": "Infinity"}, "decimal amount"),
        ({"usd_per_day": "0.0000001"}, "decimal places"),
        ({"token_per_day": 5}, "unknown limit window 'token_per_day'"),
        ({"tokens_per_week": 5, "tokens_per_day": 5}, "known windows: requests_per_minute"),
    ],
)
def test_bad_limits_are_refused_with_a_clear_message(data: dict[str, object], complaint: str) -> None:
    with pytest.raises(InvalidLimits, match=complaint) as refused:
        validate_limits(data)
    assert isinstance(refused.value, ValueError)  # the admin API maps ValueError to 400/422


def test_not_a_mapping() -> None:
    with pytest.raises(InvalidLimits, match="must be an object"):
        validate_limits([("tokens_per_day", 5)])  # type: ignore[arg-type]
