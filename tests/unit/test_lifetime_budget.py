"""The browser token's own budget: reserve, resize, settle, expiry of reservations, fail policy."""

from __future__ import annotations

import asyncio

import pytest

from app.budgets.lifetime import (
    LifetimeBudget,
    LifetimeBudgetExceeded,
    MemoryLifetimeStore,
)
from app.budgets.limiter import BudgetBackendUnavailable
from app.budgets.store import StoreUnavailable


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def budget(clock: Clock, **kwargs: object) -> LifetimeBudget:
    return LifetimeBudget(MemoryLifetimeStore(), clock=clock, reservation_ttl_s=900, **kwargs)  # type: ignore[arg-type]


async def reserve(b: LifetimeBudget, tokens: int, rid: str, limit: int = 100) -> object:
    return await b.reserve(team_id="t1", budget_id="tok", limit=limit, tokens=tokens, request_id=rid, lives_until=2e6)


async def test_reservations_and_usage_share_the_limit() -> None:
    b = budget(Clock())
    first = await reserve(b, 60, "r1")
    assert first.remaining == 40  # type: ignore[attr-defined]
    with pytest.raises(LifetimeBudgetExceeded) as caught:
        await reserve(b, 50, "r2")
    assert caught.value.blocked_by_in_flight and caught.value.reserved == 60
    await b.settle(first, tokens=30)  # type: ignore[arg-type]
    second = await reserve(b, 50, "r2")
    assert (second.used, second.reserved, second.remaining) == (30, 50, 20)
    await b.settle(second, tokens=50)
    with pytest.raises(LifetimeBudgetExceeded) as caught:
        await reserve(b, 30, "r3")
    assert not caught.value.blocked_by_in_flight
    assert "80 of 100 tokens used" in caught.value.message() and "new browser token" in caught.value.message()


async def test_a_request_larger_than_the_whole_budget_says_so() -> None:
    with pytest.raises(LifetimeBudgetExceeded) as caught:
        await reserve(budget(Clock()), 101, "r1")
    assert "budget too small" in caught.value.message() and "whole budget is 100" in caught.value.message()


async def test_resize_swaps_the_reservation_and_keeps_it_when_refused() -> None:
    b = budget(Clock())
    hold = await reserve(b, 40, "r1")
    other = await reserve(b, 30, "r2")
    bigger = await b.resize(hold, tokens=70)  # type: ignore[arg-type]
    assert bigger.reserved == 100  # 70 (this one, not 40 + 70) + 30
    with pytest.raises(LifetimeBudgetExceeded):
        await b.resize(bigger, tokens=71)
    await b.settle(other, tokens=0)  # type: ignore[arg-type]
    await b.settle(bigger, tokens=10)
    assert (await reserve(b, 90, "r3")).used == 10  # type: ignore[attr-defined]


async def test_settling_twice_counts_once_and_expired_reservations_free_the_budget() -> None:
    clock = Clock()
    b = budget(clock)
    hold = await reserve(b, 100, "r1")
    await b.settle(hold, tokens=20)  # type: ignore[arg-type]
    await b.settle(hold, tokens=20)  # type: ignore[arg-type]
    stuck = await reserve(b, 80, "r2")  # its process dies: never settled
    assert stuck.remaining == 0  # type: ignore[attr-defined]
    clock.now += 901
    assert (await reserve(b, 80, "r3")).used == 20  # type: ignore[attr-defined]


async def test_concurrent_reservations_never_exceed_the_limit() -> None:
    b = budget(Clock())
    results = await asyncio.gather(*(reserve(b, 7, f"r{i}") for i in range(50)), return_exceptions=True)
    admitted = [r for r in results if not isinstance(r, Exception)]
    assert len(admitted) == 100 // 7


class DownStore:
    async def reserve(self, *args: object, **kwargs: object) -> object:
        raise StoreUnavailable("down")

    async def settle(self, *args: object, **kwargs: object) -> None:
        raise StoreUnavailable("down")


async def test_store_outage_follows_the_failure_policy() -> None:
    closed = LifetimeBudget(DownStore(), failure_policy="closed")  # type: ignore[arg-type]
    with pytest.raises(BudgetBackendUnavailable):
        await reserve(closed, 10, "r1")
    opened = LifetimeBudget(DownStore(), failure_policy="open")  # type: ignore[arg-type]
    hold = await reserve(opened, 10, "r1")
    assert not hold.counted and hold.headers() == {}  # type: ignore[attr-defined]
    await opened.settle(hold, tokens=5)  # type: ignore[arg-type]
