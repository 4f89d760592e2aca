"""The one mapping from a refused admit to the client's error, and the output-cap arithmetic."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from app.budgets.capping import cap_output
from app.budgets.errors import BudgetBackendUnavailable, BudgetExceeded, as_gateway_error
from app.budgets.store import WindowState
from app.budgets.windows import amounts_vector


def exceeded(*, used: int = 900, limit: int = 1000, requested: int = 200, retry_after_s: int = 1) -> BudgetExceeded:
    return BudgetExceeded(
        window="tokens_per_day",
        scope="team",
        used=used,
        reserved=0,
        limit=limit,
        requested=requested,
        reset_at=datetime(2031, 2, 1, tzinfo=UTC),
        retry_after_s=retry_after_s,
    )


@pytest.mark.parametrize(
    ("err", "should_retry"),
    [
        (exceeded(retry_after_s=1), "true"),  # in-flight reservations were in the way
        (exceeded(retry_after_s=60), "true"),
        (exceeded(retry_after_s=3600), "false"),  # the day is spent
        (exceeded(used=0, requested=5000, retry_after_s=1), "false"),  # never fits
    ],
)
def test_budget_exceeded_is_a_429_with_retry_headers(err: BudgetExceeded, should_retry: str) -> None:
    error = as_gateway_error(err)
    assert (error.kind, error.status) == ("rate_limit", 429)
    assert error.headers == {"retry-after": str(err.retry_after_s), "x-should-retry": should_retry}
    assert error.message == err.message() and "tokens_per_day" in error.message


def test_an_unreachable_budget_store_is_a_503() -> None:
    error = as_gateway_error(BudgetBackendUnavailable("down"))
    assert (error.kind, error.status) == ("unavailable", 503)


def test_cap_output_takes_the_tightest_window() -> None:
    amounts = amounts_vector(300, 3000)  # 50 input + 250 output tokens; 2,500 µUSD of it output
    states = [
        WindowState(w=2, used=800, reserved=0, limit=1000),  # 200 left: 150 output
        WindowState(w=7, used=0, reserved=60, limit=200),  # key minute: 140 left: 90 output
        WindowState(w=4, used=0, reserved=0, limit=1500),  # 1,000 µUSD for output: 100 tokens
    ]
    capped = cap_output(states, amounts, 250, 2500)
    assert capped is not None and capped.output_tokens == 90
    assert capped.amounts == (1, 140, 140, 140, 1400, 1400)


def test_cap_output_gives_up_when_not_even_the_input_fits() -> None:
    amounts = amounts_vector(300, 0)
    assert cap_output([WindowState(w=2, used=960, reserved=0, limit=1000)], amounts, 250) is None
    assert cap_output([WindowState(w=0, used=5, reserved=0, limit=5)], amounts, 250) is None  # requests
    # A readmit's own reservation is counted back in.
    held = amounts_vector(100, 0)
    capped = cap_output([WindowState(w=2, used=800, reserved=100, limit=1000)], amounts, 250, 0, held)
    assert capped is not None and capped.output_tokens == 150
