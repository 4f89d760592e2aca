"""The browser token budget's Lua scripts against a real Redis: the same answers as the memory store,
and atomic under concurrency."""

from __future__ import annotations

import asyncio
import uuid

import pytest
import redis.asyncio as aioredis

from app.budgets.lifetime import LifetimeBudget, LifetimeBudgetExceeded, RedisLifetimeStore


async def test_redis_lifetime_budget(redis_url: str) -> None:
    client = aioredis.Redis.from_url(redis_url)
    try:
        b = LifetimeBudget(RedisLifetimeStore(client), reservation_ttl_s=900)
        token = uuid.uuid4().hex
        team = f"lt-{token[:8]}"

        async def reserve(tokens: int, rid: str) -> object:
            return await b.reserve(
                team_id=team, budget_id=token, limit=100, tokens=tokens, request_id=rid, lives_until=4e9
            )

        results = await asyncio.gather(*(reserve(7, f"r{i}") for i in range(40)), return_exceptions=True)
        admitted = [r for r in results if not isinstance(r, BaseException)]
        refused = [r for r in results if isinstance(r, LifetimeBudgetExceeded)]
        assert len(admitted) == 14 and len(refused) == 26
        for hold in admitted:
            await b.settle(hold, tokens=5)  # type: ignore[arg-type]
        key = f"tw:{{{team}}}:bt:{token}"
        assert int(await client.hget(key, "used")) == 70
        assert await client.hlen(key) == 1  # every reservation released
        assert await client.ttl(key) > 0  # the hash goes away on its own
        bigger = await b.resize(await reserve(10, "x"), tokens=30)  # type: ignore[arg-type]
        assert (bigger.used, bigger.reserved, bigger.remaining) == (70, 30, 0)
        with pytest.raises(LifetimeBudgetExceeded):
            await reserve(1, "y")
        await client.delete(key)
    finally:
        await client.aclose()
