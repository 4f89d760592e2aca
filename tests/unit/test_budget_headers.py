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


def test_remaining_never_goes_negative_and_usd_windows_make_no_headers() -> None:
    states = [
        WindowState(w=2, used=900, reserved=200, limit=1000),
        WindowState(w=4, used=1, reserved=0, limit=5),
    ]
    ends = (60, 60, 86_400, 2_678_400, 86_400, 2_678_400)
    headers = budget_headers(states, ends, 0, "openai")
    assert headers == {
        "x-ratelimit-limit-tokens": "1000",
        "x-ratelimit-remaining-tokens": "0",
        "x-ratelimit-reset-tokens": "24h0m0s",
    }
