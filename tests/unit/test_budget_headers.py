"""Header value formats and the choice of the tightest window."""

from __future__ import annotations

import pytest

from app.budgets.headers import budget_headers, go_duration, rfc3339
from app.budgets.store import WindowState


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.012, "12ms"), (0.0001, "1ms"), (1, "1s"), (59.2, "1m0s"), (360, "6m0s"), (7205, "2h0m5s"), (0, "0s")],
)
def test_go_durations(seconds: float, text: str) -> None:
    assert go_duration(seconds) == text


def test_rfc3339() -> None:
    assert rfc3339(1927670400) == "2031-02-01T00:00:00Z"


def test_remaining_counts_settled_usage_and_reservations_have_their_own_header() -> None:
    states = [
        WindowState(w=2, used=900, reserved=200, limit=1000),  # team tokens/day: 100 settled left
        WindowState(w=4, used=1, reserved=0, limit=5),  # usd: no standard header
    ]
    ends = (60, 60, 86_400, 2_678_400, 86_400, 2_678_400)
    assert budget_headers(states, ends, 0, "openai") == {
        "x-ratelimit-limit-tokens": "1000",
        "x-ratelimit-remaining-tokens": "100",
        "x-ratelimit-reset-tokens": "24h0m0s",
        "x-tollway-budget-reserved-tokens": "200",
    }


def test_remaining_never_goes_negative() -> None:
    states = [WindowState(w=1, used=1200, reserved=0, limit=1000), WindowState(w=0, used=3, reserved=2, limit=4)]
    ends = (60, 60, 86_400, 2_678_400, 86_400, 2_678_400)
    assert budget_headers(states, ends, 30, "anthropic") == {
        "anthropic-ratelimit-tokens-limit": "1000",
        "anthropic-ratelimit-tokens-remaining": "0",
        "anthropic-ratelimit-tokens-reset": "1970-01-01T00:01:00Z",
        "x-tollway-budget-reserved-tokens": "0",
        "anthropic-ratelimit-requests-limit": "4",
        "anthropic-ratelimit-requests-remaining": "1",
        "anthropic-ratelimit-requests-reset": "1970-01-01T00:01:00Z",
        "x-tollway-budget-reserved-requests": "2",
    }


def test_the_tightest_window_is_the_one_with_least_room_for_a_new_request() -> None:
    # Day: 500 settled left but 450 reserved (50 available); minute: 100 left, nothing reserved.
    states = [WindowState(w=2, used=500, reserved=450, limit=1000), WindowState(w=1, used=0, reserved=0, limit=100)]
    ends = (60, 60, 86_400, 2_678_400, 86_400, 2_678_400)
    headers = budget_headers(states, ends, 0, "openai")
    assert (headers["x-ratelimit-limit-tokens"], headers["x-ratelimit-remaining-tokens"]) == ("1000", "500")
    assert headers["x-tollway-budget-reserved-tokens"] == "450"
