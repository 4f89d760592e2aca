"""Retry policy: which statuses are retried, backoff bounds and jitter, retry-after."""

from __future__ import annotations

import random

import pytest

from app.routing.retry import FALL_BACK, backoff_delay, is_retryable
from app.routing.retry_after import RETRY_AFTER_CAP_S, parse_retry_after


@pytest.mark.parametrize("status", [None, 408, 429, 500, 502, 503, 504, 529, 599])
def test_retryable(status: int | None) -> None:
    assert is_retryable(status)


@pytest.mark.parametrize("status", [200, 400, 401, 403, 404, 409, 413, 422, 501])
def test_not_retryable(status: int) -> None:
    assert not is_retryable(status)


def test_backoff_is_full_jitter_within_exponential_bounds() -> None:
    rng = random.Random(3)
    for attempt, ceiling in [(0, 0.2), (1, 0.4), (2, 0.8), (3, 1.6), (6, 5.0), (30, 5.0)]:
        delays = [backoff_delay(attempt, base=0.2, cap=5.0, retry_after_s=None, rng=rng) for _ in range(500)]
        assert all(0.0 <= d <= ceiling for d in delays)
        assert max(delays) > 0.8 * ceiling  # the whole range is used ...
        assert min(delays) < 0.2 * ceiling  # ... from near zero: full jitter
        assert len(set(delays)) > 400


def test_retry_after_within_the_cap_is_honoured_exactly() -> None:
    rng = random.Random(0)
    assert backoff_delay(0, base=0.2, cap=5.0, retry_after_s=1.5, rng=rng) == 1.5
    assert backoff_delay(4, base=0.2, cap=5.0, retry_after_s=5.0, rng=rng) == 5.0
    assert backoff_delay(0, base=0.2, cap=5.0, retry_after_s=0.0, rng=rng) == 0.0


def test_retry_after_beyond_the_cap_means_fall_back_without_waiting() -> None:
    delay = backoff_delay(0, base=0.2, cap=5.0, retry_after_s=30.0, rng=random.Random(0))
    assert delay == FALL_BACK and delay < 0


def test_parse_retry_after_forms() -> None:
    assert parse_retry_after({"retry-after": "7"}) == 7.0
    assert parse_retry_after({"retry-after": "1.5"}) == 1.5
    assert parse_retry_after({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    date = "Wed, 21 Oct 2015 07:28:30 GMT"
    now = 1445412480.0  # 07:28:00 that day
    assert parse_retry_after({"retry-after": date}, now=now) == pytest.approx(30.0)
    assert parse_retry_after({"retry-after": date}, now=now + 100) == 0.0
    assert parse_retry_after({"retry-after": "soon"}) is None
    assert parse_retry_after({"retry-after": "-3"}) is None
    assert parse_retry_after({}) is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("inf", None),
        ("-inf", None),
        ("nan", None),
        ("-1", None),
        ("1e309", None),  # overflows to inf
        ("99999999999", RETRY_AFTER_CAP_S),  # finite but absurd: clamped
        ("1e300", RETRY_AFTER_CAP_S),
        ("Fri, 31 Dec 9999 23:59:59 GMT", RETRY_AFTER_CAP_S),  # a date far ahead: clamped
        ("Mon, 99 Foo 2015 99:99:99 GMT", None),
        ("", None),
        ("\x00\xff", None),
        ("9" * 5000, None),  # a 5,000-digit number is inf as a float
        (" 12 ", 12.0),
    ],
)
def test_hostile_retry_after_is_absent_or_capped_and_never_raises(value: str, expected: float | None) -> None:
    assert parse_retry_after({"retry-after": value}) == expected
    # the millisecond form: never raises, never beyond the cap, and an unusable one yields to retry-after
    in_ms = parse_retry_after({"retry-after-ms": value})
    assert in_ms is None or 0.0 <= in_ms <= RETRY_AFTER_CAP_S
    if in_ms is None:
        assert parse_retry_after({"retry-after-ms": value, "retry-after": "3"}) == 3.0


@pytest.mark.parametrize("bad", [float("inf"), float("nan"), -1.0, 1e309])
def test_backoff_ignores_unusable_retry_after(bad: float) -> None:
    delay = backoff_delay(0, base=0.2, cap=5.0, retry_after_s=bad, rng=random.Random(0))
    assert 0.0 <= delay <= 0.2  # the ordinary jittered backoff, as if no retry-after had come
