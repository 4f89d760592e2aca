"""Failed sign-ins are throttled per client address, with bounded memory."""

from __future__ import annotations

from app.auth.throttle import FailedAuthThrottle


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_an_address_is_refused_after_its_failures_until_the_window_passes() -> None:
    clock = Clock()
    throttle = FailedAuthThrottle(max_failures=3, window_s=60, clock=clock)
    for _ in range(3):
        assert throttle.retry_after("10.0.0.1") is None
        throttle.failed("10.0.0.1")
    wait = throttle.retry_after("10.0.0.1")
    assert wait is not None and 0 < wait <= 60
    assert throttle.retry_after("10.0.0.2") is None  # another address is unaffected
    clock.now += 61
    assert throttle.retry_after("10.0.0.1") is None


def test_a_correct_key_before_the_limit_clears_the_count() -> None:
    throttle = FailedAuthThrottle(max_failures=3, window_s=60, clock=Clock())
    throttle.failed("a")
    throttle.failed("a")
    throttle.succeeded("a")
    throttle.failed("a")
    throttle.failed("a")
    assert throttle.retry_after("a") is None


def test_memory_is_bounded_to_the_most_recent_addresses() -> None:
    throttle = FailedAuthThrottle(max_failures=1, window_s=60, max_addresses=100, clock=Clock())
    for i in range(1000):
        throttle.failed(f"addr-{i}")
    assert len(throttle._failures) == 100
    assert throttle.retry_after("addr-999") is not None
    assert throttle.retry_after("addr-0") is None
