"""Redis going away mid-run, both policies, against a private redis-server that the test kills.

Fail closed: limited requests get ``BudgetBackendUnavailable`` (503) while Redis is down; settles
never raise and reach Redis once it is back. Fail open: requests are admitted and counted locally,
and the background reconciler writes that usage into Redis after the restart.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal

import pytest
import redis.asyncio as aioredis

from app.auth.principal import Limits
from app.budgets.limiter import BudgetBackendUnavailable, BudgetLimiter
from app.budgets.redis_store import RedisStore, connect_budget_redis
from app.budgets.store import PendingSettle, ReconcileBatch
from app.budgets.windows import windows_at
from tests.integration.test_budget_support import FakeClock, RedisServer, principal

ZERO = Decimal(0)


@pytest.fixture
def server() -> Iterator[RedisServer]:
    with RedisServer() as srv:
        yield srv


@pytest.fixture
async def client(server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    redis = connect_budget_redis(server.url)
    yield redis
    await redis.aclose()


def limiter_for(client: aioredis.Redis, clock: FakeClock, policy: str) -> BudgetLimiter:
    return BudgetLimiter(
        RedisStore(client),
        failure_policy=policy,
        clock=clock,
        wait_ms=0,
        reconcile_interval_s=0.05,
        breaker_s=0.05,
    )


async def eventually(predicate_coro: object, timeout_s: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        if await predicate_coro():  # type: ignore[operator]
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.05)


async def test_fail_closed_refuses_while_down_and_settles_after_restart(
    server: RedisServer, client: aioredis.Redis
) -> None:
    clock = FakeClock()
    limiter = limiter_for(client, clock, "closed")
    who = principal(uuid.uuid4().hex, team=Limits(tokens_per_day=10_000))
    in_flight = await limiter.admit(who, tokens=1_000, usd=ZERO, request_id="before-outage")

    server.stop()
    with pytest.raises(BudgetBackendUnavailable) as refused:
        await limiter.admit(who, tokens=10, usd=ZERO, request_id="during-outage")
    assert "temporarily unavailable" in refused.value.message()
    await limiter.settle(in_flight, tokens=700, usd=ZERO)  # never raises: counted locally
    assert limiter.ledger

    # Unlimited principals are unaffected: they never need Redis.
    await limiter.admit(principal("free"), tokens=10, usd=ZERO, request_id="free")

    server.start()  # same port, empty (no persistence)
    await eventually(lambda: _ledger_empty(limiter))
    ws = windows_at(who.team_id, who.key_id, clock())
    assert int(await client.hget(ws.period_key(2), ws.field(2)) or 0) == 700
    await asyncio.sleep(0.06)  # past the breaker
    admission = await limiter.admit(who, tokens=10, usd=ZERO, request_id="after-outage")
    assert admission.states[0].used == 700 and not admission.degraded
    await limiter.aclose()


async def test_fail_open_serves_counts_locally_and_reconciles_after_restart(
    server: RedisServer, client: aioredis.Redis
) -> None:
    clock = FakeClock()
    limiter = limiter_for(client, clock, "open")
    who = principal(uuid.uuid4().hex, "key-1", team=Limits(tokens_per_day=10_000, usd_per_day="5"))
    first = await limiter.admit(who, tokens=100, usd=Decimal("0.01"), request_id="before")
    await limiter.settle(first, tokens=100, usd=Decimal("0.01"))

    server.stop()
    counted = 0
    for i in range(5):
        admission = await limiter.admit(who, tokens=500, usd=Decimal("0.05"), request_id=f"down-{i}")
        assert admission.degraded and admission.headers_for("anthropic") == {}
        await limiter.settle(admission, tokens=300 + i, usd=Decimal("0.03"))
        counted += 300 + i
    with pytest.raises(BudgetBackendUnavailable):
        await limiter.status(who)  # status has no fallback: it reports what Redis holds

    server.start()
    await eventually(lambda: _ledger_empty(limiter))
    ws = windows_at(who.team_id, who.key_id, clock())
    # Redis restarted empty, so it now holds exactly what was counted locally during the outage.
    day = await client.hgetall(ws.period_keys[1])
    assert int(day[b"t:tpd"]) == counted  # team tokens_per_day
    assert int(day[b"k:key-1:tpd"]) == counted  # key tokens_per_day
    assert int(day[b"t:usdd"]) == 5 * 30_000  # usd_per_day, micro-USD
    minute = await client.hgetall(ws.period_keys[0])
    assert int(minute[b"t:rpm"]) == 5  # requests
    status = await limiter.status(who)
    assert status["team"]["tokens_per_day"]["used"] == counted
    assert status["team"]["usd_per_day"]["used"] == "0.15"
    await limiter.aclose()


async def test_a_settle_that_failed_releases_its_reservation_once_redis_is_back(
    server: RedisServer, client: aioredis.Redis
) -> None:
    """Redis blips without losing data: the reservation made before is released by reconciliation
    instead of blocking budget until it expires."""
    clock = FakeClock()
    limiter = limiter_for(client, clock, "open")
    who = principal(uuid.uuid4().hex, team=Limits(tokens_per_day=1_000))
    held = await limiter.admit(who, tokens=900, usd=ZERO, request_id="held")
    # Make the settle fail without losing Redis' data: point the store at a dead port for a moment.
    store = limiter.store
    assert isinstance(store, RedisStore)
    dead = connect_budget_redis("redis://127.0.0.1:1/0")
    live_client = store.redis
    limiter.store = RedisStore(dead)
    await limiter.settle(held, tokens=50, usd=ZERO)
    assert limiter.ledger
    limiter.store = RedisStore(live_client)
    await eventually(lambda: _ledger_empty(limiter))
    status = await limiter.status(who)
    assert (status["team"]["tokens_per_day"]["used"], status["team"]["tokens_per_day"]["reserved"]) == (50, 0)
    await dead.aclose()
    await limiter.aclose()


async def test_a_reconciled_settle_counts_exactly_once(client: aioredis.Redis) -> None:
    store = RedisStore(client)
    now = FakeClock()()
    team = uuid.uuid4().hex
    ws = windows_at(team, "k", now)
    expiry = (int(now) + 3600,) * 3

    def batch(*ids: str) -> ReconcileBatch:
        settles = [PendingSettle(rid, "k", ws.period_keys, expiry, (0, 0, 42, 0, 0, 0)) for rid in ids]
        return ReconcileBatch(team_id=team, batch_id=uuid.uuid4().hex, settles=settles)

    first = batch("r1")
    await store.apply([first], now=now)
    await store.apply([first], now=now)  # the same batch retried after a lost reply
    await store.apply([batch("r1")], now=now)  # the same settle in a new batch
    # A settle that reached Redis (its reply lost) and was then also counted locally and reconciled:
    assert await store.settle(ws, "r2", (0, 0, 42, 0, 0, 0), now=now, grace_s=60)
    await store.apply([batch("r2", "r3")], now=now)
    assert not await store.settle(ws, "r3", (0, 0, 42, 0, 0, 0), now=now, grace_s=60)  # already settled
    assert await client.hgetall(ws.period_keys[1]) == {b"t:tpd": b"126", b"k:k:tpd": b"126"}
    assert 3500 < await client.ttl(ws.period_keys[1]) <= 3600


async def _ledger_empty(limiter: BudgetLimiter) -> bool:
    return not limiter.ledger
