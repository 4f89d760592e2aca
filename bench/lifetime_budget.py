"""Cost of a browser token's own budget per request: one reserve plus one settle, sequential.

    PYTHONPATH=$PWD python -m bench.lifetime_budget [redis://127.0.0.1:6379/15]

Prints microseconds per request for the Redis store (two Lua round trips) and the in-process store.
Touches only its own key (``tw:{bench-lifetime}:bt:<random>``), deleted at the end.
"""

from __future__ import annotations

import asyncio
import sys
import time
import uuid

from app.budgets.lifetime import LifetimeBudget, LifetimeStore, MemoryLifetimeStore, RedisLifetimeStore
from app.budgets.redis_store import connect_budget_redis

TEAM = "bench-lifetime"


async def per_request_us(store: LifetimeStore, token: str, n: int = 2000) -> float:
    budget = LifetimeBudget(store)
    started = time.perf_counter()
    for i in range(n):
        hold = await budget.reserve(
            team_id=TEAM, budget_id=token, limit=10**12, tokens=100, request_id=f"r{i}", lives_until=time.time() + 60
        )
        await budget.settle(hold, tokens=50)
    return (time.perf_counter() - started) / n * 1e6


async def main(url: str) -> None:
    redis = connect_budget_redis(url)
    token = uuid.uuid4().hex
    try:
        print(f"redis  reserve+settle: {await per_request_us(RedisLifetimeStore(redis), token):.0f} µs/request")
        print(f"memory reserve+settle: {await per_request_us(MemoryLifetimeStore(), token):.1f} µs/request")
    finally:
        await redis.delete(f"tw:{{{TEAM}}}:bt:{token}")
        await redis.aclose()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "redis://127.0.0.1:6379/15"))
