"""Strict mode across processes: 4 OS processes x 50 concurrent requests against one Redis and a
budget that fits about 50 worst cases. The settled total never exceeds the budget, the budget ends
used to within one request's worth, and no reservation outlives its expiry."""

from __future__ import annotations

import time
import uuid
from decimal import Decimal

import pytest

from app.auth.principal import Limits
from app.budgets.limiter import BudgetExceeded, BudgetLimiter
from app.budgets.redis_store import RedisStore, connect_budget_redis
from tests.integration.test_budget_support import BudgetWorkload, combine, principal, run_workload_processes

WORST = 1_000
BUDGET = 50 * WORST + 500  # about 50 worst-case requests


@pytest.mark.slow
async def test_four_processes_never_overspend_and_leave_nothing_reserved(redis_url: str) -> None:
    team = uuid.uuid4().hex
    workload = BudgetWorkload(
        redis_url=redis_url, team_id=team, budget_tokens=BUDGET, worst_case_tokens=WORST
    )
    reports = run_workload_processes(workload, processes=4, seed=7)
    total = combine(reports)

    assert sum(total.outcomes.values()) == 200
    assert total.outcomes["gave_up"] == 0
    assert total.outcomes["rejected"] > 0, "the budget must run out for the test to mean anything"
    assert total.outcomes["abandoned"] > 0 and total.outcomes["aborted"] > 0

    # Read Redis from a clock past every reservation's expiry: abandoned ones are purged.
    redis = connect_budget_redis(redis_url)
    observer = BudgetLimiter(RedisStore(redis), clock=lambda: time.time() + workload.reservation_ttl_s + 1)
    who = principal(team, team=Limits(tokens_per_day=BUDGET))
    window = (await observer.status(who))["team"]["tokens_per_day"]

    # Exact accounting: Redis holds precisely what the processes settled.
    assert window["used"] == total.settled_tokens
    # The promise: never more than the budget.
    assert total.settled_tokens <= BUDGET
    # No large under-use: a request was refused only when settled usage alone left < WORST.
    assert BUDGET - total.settled_tokens < WORST, (total.settled_tokens, total.outcomes)
    # Nothing leaked: every reservation was settled or has expired.
    assert window["reserved"] == 0
    # And the budget is really closed now.
    with pytest.raises(BudgetExceeded) as refused:
        await observer.admit(who, tokens=WORST, usd=Decimal(0), request_id="after")
    assert not refused.value.blocked_by_in_flight
    await observer.aclose()
    await redis.aclose()
