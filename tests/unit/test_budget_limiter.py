"""The limiter's fast path: principals without limits never touch the store."""

from __future__ import annotations

from decimal import Decimal

import pytest

from app.auth.principal import Limits
from app.budgets.limiter import BudgetBackendUnavailable, BudgetLimiter
from app.budgets.redis_store import RedisStore, connect_budget_redis
from tests.integration.test_budget_support import FakeClock, free_port, principal


async def test_unlimited_principals_never_touch_the_store() -> None:
    # Nothing listens on this port and the policy is fail-closed: any store call would raise.
    redis = connect_budget_redis(f"redis://127.0.0.1:{free_port()}/0")
    limiter = BudgetLimiter(RedisStore(redis), failure_policy="closed", clock=FakeClock())
    try:
        free = principal("team-unlimited")
        admission = await limiter.admit(free, tokens=10_000, usd=Decimal(5), request_id="a")
        admission = await limiter.readmit(admission, tokens=20_000, usd=Decimal(9))
        await limiter.settle(admission, tokens=15_000, usd=Decimal(7))
        assert admission.unlimited and not limiter.ledger
        with pytest.raises(BudgetBackendUnavailable):  # the same store, for a limited principal
            await limiter.admit(
                principal("t2", team=Limits(tokens_per_day=5)), tokens=1, usd=Decimal(0), request_id="b"
            )
    finally:
        await limiter.aclose()
        await redis.aclose()
