"""The budget semantics, run against both stores: real Redis (Lua) and the in-process memory store.

Time is an injected clock: windows roll and reservations expire without sleeping.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from decimal import Decimal

import pytest
import redis.asyncio as aioredis

from app.auth.principal import Limits
from app.budgets.limiter import BudgetBackendUnavailable, BudgetExceeded, BudgetLimiter
from app.budgets.limits import limits_vector
from app.budgets.memory_store import MemoryStore
from app.budgets.redis_store import RedisStore, connect_budget_redis
from app.budgets.store import AdmitTooLate, AlreadySettled
from app.budgets.windows import amounts_vector, team_keys, windows_at
from tests.integration.test_budget_support import START, FakeClock, principal

MakeLimiter = Callable[..., BudgetLimiter]
ZERO = Decimal(0)


@pytest.fixture(params=["memory", "redis"])
async def make_limiter(request: pytest.FixtureRequest) -> AsyncIterator[MakeLimiter]:
    """Builds limiters on one shared store of the parametrized kind (like replicas sharing Redis)."""
    made: list[BudgetLimiter] = []
    client: aioredis.Redis | None = None
    memory = MemoryStore()
    if request.param != "memory":
        client = connect_budget_redis(request.getfixturevalue("redis_url"))

    def make(clock: FakeClock, **options: object) -> BudgetLimiter:
        store = RedisStore(client) if client is not None else memory
        options.setdefault("wait_ms", 0)
        options.setdefault("reservation_ttl_s", 900)
        limiter = BudgetLimiter(store, clock=clock, **options)  # type: ignore[arg-type]
        made.append(limiter)
        return limiter

    yield make
    for limiter in made:
        await limiter.aclose()
    if client is not None:
        await client.aclose()


def new_team() -> str:
    return uuid.uuid4().hex


def utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


# ---- windows ----------------------------------------------------------------------------------------


async def test_day_budget_admits_up_to_the_limit_then_refuses_until_midnight(
    make_limiter: MakeLimiter,
) -> None:
    clock = FakeClock(START - 3600)  # 2031-01-31 22:59
    limiter = make_limiter(clock)
    who = principal(new_team(), team=Limits(tokens_per_day=1000))

    for i in range(4):
        admission = await limiter.admit(who, tokens=250, usd=ZERO, request_id=f"r{i}")
        await limiter.settle(admission, tokens=250, usd=ZERO)

    with pytest.raises(BudgetExceeded) as refused:
        await limiter.admit(who, tokens=1, usd=ZERO, request_id="over")
    exc = refused.value
    assert (exc.window, exc.scope, exc.used, exc.limit, exc.requested) == (
        "tokens_per_day",
        "team",
        1000,
        1000,
        1,
    )
    assert exc.reset_at == datetime(2031, 2, 1, tzinfo=UTC)
    assert exc.retry_after_s == 3660  # 22:59:00 → 00:00:00
    assert not exc.blocked_by_in_flight
    assert "tokens_per_day" in exc.message() and "1,000 tokens" in exc.message()
    assert "2031-02-01T00:00:00Z" in exc.message()

    clock.advance(3660)  # the next UTC day: a fresh window, no cron involved
    admission = await limiter.admit(who, tokens=1000, usd=ZERO, request_id="next-day")
    assert admission.states[0].used == 0


async def test_month_budget_rolls_over_on_the_first(make_limiter: MakeLimiter) -> None:
    clock = FakeClock(START)  # 2031-01-31 23:59:00
    limiter = make_limiter(clock)
    who = principal(new_team(), team=Limits(tokens_per_month=500))
    admission = await limiter.admit(who, tokens=500, usd=ZERO, request_id="jan")
    await limiter.settle(admission, tokens=500, usd=ZERO)
    with pytest.raises(BudgetExceeded) as refused:
        await limiter.admit(who, tokens=10, usd=ZERO, request_id="jan-2")
    assert refused.value.window == "tokens_per_month"
    assert refused.value.reset_at == datetime(2031, 2, 1, tzinfo=UTC)
    assert refused.value.retry_after_s == 60

    clock.advance(60)
    status = await limiter.status(who)
    assert status["team"]["tokens_per_month"]["used"] == 0
    assert status["team"]["tokens_per_month"]["reset_at"] == "2031-03-01T00:00:00Z"
    await limiter.admit(who, tokens=500, usd=ZERO, request_id="feb")


async def test_requests_per_minute_counts_admissions_in_fixed_minutes(make_limiter: MakeLimiter) -> None:
    clock = FakeClock(START + 15)  # 23:59:15
    limiter = make_limiter(clock)
    who = principal(new_team(), team=Limits(requests_per_minute=3))
    for i in range(3):
        admission = await limiter.admit(who, tokens=10, usd=ZERO, request_id=f"r{i}")
        await limiter.settle(admission, tokens=0, usd=ZERO)  # a request counts even with no tokens
    with pytest.raises(BudgetExceeded) as refused:
        await limiter.admit(who, tokens=10, usd=ZERO, request_id="r4")
    assert (refused.value.window, refused.value.used, refused.value.requested) == (
        "requests_per_minute",
        3,
        1,
    )
    assert refused.value.retry_after_s == 45
    assert "3 requests used of 3 requests" in refused.value.message()

    clock.advance(45)  # 00:00:00, a new fixed minute
    await limiter.admit(who, tokens=10, usd=ZERO, request_id="r5")


async def test_tokens_per_minute(make_limiter: MakeLimiter) -> None:
    clock = FakeClock(START)
    limiter = make_limiter(clock)
    who = principal(new_team(), team=Limits(tokens_per_minute=100))
    admission = await limiter.admit(who, tokens=80, usd=ZERO, request_id="a")
    await limiter.settle(admission, tokens=70, usd=ZERO)
    await limiter.admit(who, tokens=30, usd=ZERO, request_id="b")  # 70 settled + 30 = 100: fits exactly
    with pytest.raises(BudgetExceeded) as refused:
        await limiter.admit(who, tokens=1, usd=ZERO, request_id="c")
    assert refused.value.window == "tokens_per_minute"
    clock.advance(60)
    await limiter.admit(who, tokens=100, usd=ZERO, request_id="d")


# ---- scopes -----------------------------------------------------------------------------------------


async def test_key_limits_and_team_limits_both_apply(make_limiter: MakeLimiter) -> None:
    clock = FakeClock()
    limiter = make_limiter(clock)
    team = new_team()
    team_limits = Limits(tokens_per_day=1000)
    key_a = principal(team, "key-a", team=team_limits, key=Limits(tokens_per_day=300))
    key_b = principal(team, "key-b", team=team_limits)

    admission = await limiter.admit(key_a, tokens=300, usd=ZERO, request_id="a1")
    await limiter.settle(admission, tokens=300, usd=ZERO)
    with pytest.raises(BudgetExceeded) as refused:
        await limiter.admit(key_a, tokens=1, usd=ZERO, request_id="a2")
    assert (refused.value.scope, refused.value.limit, refused.value.used) == ("key", 300, 300)

    # key-b has no limit of its own, but shares the team's 1000: 300 are gone.
    admission = await limiter.admit(key_b, tokens=700, usd=ZERO, request_id="b1")
    await limiter.settle(admission, tokens=700, usd=ZERO)
    with pytest.raises(BudgetExceeded) as refused:
        await limiter.admit(key_b, tokens=1, usd=ZERO, request_id="b2")
    assert (refused.value.scope, refused.value.used) == ("team", 1000)

    status = await limiter.status(key_a)
    assert status["key"]["tokens_per_day"]["used"] == 300
    assert status["team"]["tokens_per_day"]["used"] == 1000


async def test_usd_windows_count_cost(make_limiter: MakeLimiter) -> None:
    clock = FakeClock()
    limiter = make_limiter(clock)
    who = principal(new_team(), team=Limits(usd_per_day="1.50", usd_per_month="100"))
    admission = await limiter.admit(who, tokens=1, usd=Decimal("1.2"), request_id="a")
    await limiter.settle(admission, tokens=1, usd=Decimal("0.9000001"))  # rounded up to the micro-dollar
    with pytest.raises(BudgetExceeded) as refused:
        await limiter.admit(who, tokens=1, usd=Decimal("0.6"), request_id="b")
    exc = refused.value
    assert exc.window == "usd_per_day"
    assert (exc.used, exc.limit, exc.requested) == (Decimal("0.900001"), Decimal("1.5"), Decimal("0.6"))
    assert "$0.900001 used of $1.5" in exc.message()
    await limiter.admit(who, tokens=1, usd=Decimal("0.599999"), request_id="c")
    status = await limiter.status(who)
    assert status["team"]["usd_per_month"]["used"] == "0.900001"
    assert status["team"]["usd_per_day"]["remaining"] == "0"


async def test_zero_limit_refuses_everything_and_says_it_never_fits(make_limiter: MakeLimiter) -> None:
    limiter = make_limiter(FakeClock())
    who = principal(new_team(), key=Limits(tokens_per_day=0))
    with pytest.raises(BudgetExceeded) as refused:
        await limiter.admit(who, tokens=5, usd=ZERO, request_id="a")
    assert refused.value.never_fits and refused.value.scope == "key"
    assert "more than the whole limit" in refused.value.message()


# ---- reservations in flight -------------------------------------------------------------------------


async def test_in_flight_reservations_count_and_a_waiting_request_gets_in_after_settle(
    make_limiter: MakeLimiter,
) -> None:
    clock = FakeClock()
    limiter = make_limiter(clock, wait_ms=2000)
    who = principal(new_team(), team=Limits(tokens_per_day=1000))
    first = await limiter.admit(who, tokens=800, usd=ZERO, request_id="first")

    async def settle_soon() -> None:
        await asyncio.sleep(0.05)
        await limiter.settle(first, tokens=200, usd=ZERO)

    settler = asyncio.create_task(settle_soon())
    second = await limiter.admit(who, tokens=800, usd=ZERO, request_id="second")  # waits for `first`
    await settler
    assert second.states[0].used == 200 and second.states[0].reserved == 800


async def test_refusal_caused_by_in_flight_reservations_says_so(make_limiter: MakeLimiter) -> None:
    limiter = make_limiter(FakeClock(), wait_ms=30)
    who = principal(new_team(), team=Limits(tokens_per_day=1000))
    await limiter.admit(who, tokens=800, usd=ZERO, request_id="holder")
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(BudgetExceeded) as refused:
        await limiter.admit(who, tokens=300, usd=ZERO, request_id="waiter")
    assert loop.time() - started >= 0.025  # it waited budget_wait_ms before giving up
    exc = refused.value
    assert exc.blocked_by_in_flight and (exc.used, exc.reserved, exc.retry_after_s) == (0, 800, 1)
    assert "800 tokens more reserved by requests in flight" in exc.message()


async def test_abandoned_reservation_expires_and_releases_budget(make_limiter: MakeLimiter) -> None:
    clock = FakeClock(START - 7200)
    limiter = make_limiter(clock, reservation_ttl_s=60)
    who = principal(new_team(), team=Limits(tokens_per_day=1000))
    await limiter.admit(who, tokens=900, usd=ZERO, request_id="killed-mid-request")  # never settled
    with pytest.raises(BudgetExceeded):
        await limiter.admit(who, tokens=200, usd=ZERO, request_id="blocked")
    assert (await limiter.status(who))["team"]["tokens_per_day"]["reserved"] == 900

    clock.advance(61)
    status = await limiter.status(who)
    assert status["team"]["tokens_per_day"]["reserved"] == 0  # nothing leaked
    admission = await limiter.admit(who, tokens=1000, usd=ZERO, request_id="after-expiry")
    assert admission.states[0].reserved == 1000


async def test_settle_after_expiry_still_counts_usage_in_the_current_windows(
    make_limiter: MakeLimiter,
) -> None:
    clock = FakeClock(START - 300)  # 23:54, five minutes before a new day and month
    limiter = make_limiter(clock, reservation_ttl_s=120)
    who = principal(new_team(), team=Limits(tokens_per_day=1000, tokens_per_month=5000))
    slow = await limiter.admit(who, tokens=500, usd=ZERO, request_id="slow")
    clock.advance(600)  # 00:04 on Feb 1: the reservation expired (and was purged) long ago
    await limiter.admit(who, tokens=1, usd=ZERO, request_id="purge")
    await limiter.settle(slow, tokens=400, usd=ZERO)
    status = await limiter.status(who)
    assert status["team"]["tokens_per_day"]["used"] == 400  # today's window
    assert status["team"]["tokens_per_month"]["used"] == 400  # February's
    assert status["team"]["tokens_per_day"]["reserved"] == 1  # only "purge" is in flight


async def test_settle_before_expiry_counts_in_the_reservation_windows_across_midnight(
    make_limiter: MakeLimiter,
) -> None:
    clock = FakeClock(START + 30)  # 23:59:30
    limiter = make_limiter(clock)
    who = principal(new_team(), team=Limits(tokens_per_day=1000))
    admission = await limiter.admit(who, tokens=500, usd=ZERO, request_id="spans-midnight")
    clock.advance(60)  # 00:00:30: a new day, reservation still valid
    await limiter.settle(admission, tokens=450, usd=ZERO)
    today = await limiter.status(who)
    assert today["team"]["tokens_per_day"]["used"] == 0 and today["team"]["tokens_per_day"]["reserved"] == 0
    clock.advance(-60)
    yesterday = await limiter.status(who)
    assert yesterday["team"]["tokens_per_day"]["used"] == 450


async def test_readmit_swaps_the_reservation_atomically(make_limiter: MakeLimiter) -> None:
    limiter = make_limiter(FakeClock())
    who = principal(new_team(), team=Limits(tokens_per_day=1000, requests_per_minute=10))
    first = await limiter.admit(who, tokens=400, usd=ZERO, request_id="fallback")
    bigger = await limiter.readmit(first, tokens=900, usd=ZERO)  # 900, not 400 + 900
    states = {s.w: s for s in bigger.states}
    assert states[2].reserved == 900
    assert states[0].reserved == 1  # still one request
    with pytest.raises(BudgetExceeded):
        await limiter.readmit(bigger, tokens=1001, usd=ZERO)
    assert (await limiter.status(who))["team"]["tokens_per_day"]["reserved"] == 900  # unchanged
    smaller = await limiter.readmit(bigger, tokens=100, usd=ZERO)
    await limiter.settle(smaller, tokens=90, usd=ZERO)
    status = await limiter.status(who)
    assert (status["team"]["tokens_per_day"]["used"], status["team"]["tokens_per_day"]["reserved"]) == (90, 0)
    assert status["team"]["requests_per_minute"]["used"] == 1


async def test_estimate_mode_records_usage_above_the_reservation(make_limiter: MakeLimiter) -> None:
    limiter = make_limiter(FakeClock(), mode="estimate")
    who = principal(new_team(), team=Limits(tokens_per_day=1000))
    admission = await limiter.admit(who, tokens=100, usd=ZERO, request_id="under-estimated")
    await limiter.settle(admission, tokens=130, usd=ZERO)
    assert (await limiter.status(who))["team"]["tokens_per_day"]["used"] == 130


async def test_double_settle_counts_once_and_does_not_raise(make_limiter: MakeLimiter) -> None:
    limiter = make_limiter(FakeClock())
    who = principal(new_team(), team=Limits(tokens_per_day=1000))
    admission = await limiter.admit(who, tokens=100, usd=ZERO, request_id="twice")
    await limiter.settle(admission, tokens=60, usd=ZERO)
    await limiter.settle(admission, tokens=60, usd=ZERO)
    assert (await limiter.status(who))["team"]["tokens_per_day"]["used"] == 60


# ---- headers ----------------------------------------------------------------------------------------


async def test_headers_describe_the_tightest_window(make_limiter: MakeLimiter) -> None:
    clock = FakeClock(START - 3600 + 0.5)  # 22:59:00.5
    limiter = make_limiter(clock)
    who = principal(
        new_team(),
        team=Limits(tokens_per_day=5_500, tokens_per_month=1_000_000, requests_per_minute=100),
        key=Limits(tokens_per_minute=5_000, requests_per_minute=20),
    )
    admission = await limiter.admit(who, tokens=1_000, usd=ZERO, request_id="h")
    anthropic = admission.headers_for("anthropic")
    assert anthropic == {
        "anthropic-ratelimit-tokens-limit": "5000",  # the key's minute window has least room left
        "anthropic-ratelimit-tokens-remaining": "5000",  # nothing settled yet ...
        "x-tollway-budget-reserved-tokens": "1000",  # ... and this request's reservation in flight
        "anthropic-ratelimit-tokens-reset": "2031-01-31T23:00:00Z",
        "anthropic-ratelimit-requests-limit": "20",
        "anthropic-ratelimit-requests-remaining": "20",
        "x-tollway-budget-reserved-requests": "1",
        "anthropic-ratelimit-requests-reset": "2031-01-31T23:00:00Z",
    }
    openai = admission.headers_for("openai")
    assert openai["x-ratelimit-limit-tokens"] == "5000"
    assert openai["x-ratelimit-remaining-tokens"] == "5000"
    assert openai["x-tollway-budget-reserved-tokens"] == "1000"
    assert openai["x-ratelimit-reset-tokens"] == "1m0s"  # 59.5 s, rounded up
    assert openai["x-ratelimit-limit-requests"] == "20"
    assert openai["x-ratelimit-reset-requests"] == "1m0s"

    await limiter.settle(admission, tokens=1_000, usd=ZERO)
    clock.advance(60)  # 23:00:00.5, a new minute: now the day window is tightest
    admission = await limiter.admit(who, tokens=2_000, usd=ZERO, request_id="h2")
    openai = admission.headers_for("openai")
    assert (openai["x-ratelimit-limit-tokens"], openai["x-ratelimit-remaining-tokens"]) == ("5500", "4500")
    assert openai["x-tollway-budget-reserved-tokens"] == "2000"
    assert openai["x-ratelimit-reset-tokens"] == "1h0m0s"


async def test_unlimited_principal_gets_no_headers_and_no_counting(make_limiter: MakeLimiter) -> None:
    limiter = make_limiter(FakeClock())
    who = principal(new_team())
    admission = await limiter.admit(who, tokens=10**9, usd=Decimal(10**6), request_id="free")
    assert admission.unlimited and admission.headers_for("anthropic") == {} == admission.headers_for("openai")
    await limiter.settle(admission, tokens=10**9, usd=ZERO)


# ---- limits that change -----------------------------------------------------------------------------


async def test_published_limits_apply_on_the_next_request_of_every_replica(make_limiter: MakeLimiter) -> None:
    clock = FakeClock()
    replica_a, replica_b = make_limiter(clock), make_limiter(clock)
    team = new_team()
    stale = principal(team, team=Limits(tokens_per_day=1000))  # what replica B's cache still says
    admission = await replica_b.admit(stale, tokens=500, usd=ZERO, request_id="before")
    await replica_b.settle(admission, tokens=500, usd=ZERO)

    await replica_a.publish_limits(team, None, Limits(tokens_per_day=600))
    with pytest.raises(BudgetExceeded) as refused:
        await replica_b.admit(stale, tokens=200, usd=ZERO, request_id="after")
    assert refused.value.limit == 600

    await replica_a.publish_limits(team, None, Limits())  # cleared: unlimited
    await replica_b.admit(stale, tokens=10_000, usd=ZERO, request_id="cleared")

    # A key's own limits are published under the team's tag too.
    await replica_a.publish_limits(team, "key-a", Limits(requests_per_minute=0))
    with pytest.raises(BudgetExceeded) as refused:
        await replica_b.admit(stale, tokens=1, usd=ZERO, request_id="key-blocked")
    assert (refused.value.scope, refused.value.window) == ("key", "requests_per_minute")


async def test_published_limits_age_out_to_the_principals_copy(make_limiter: MakeLimiter) -> None:
    clock = FakeClock()
    limiter = make_limiter(clock)
    team = new_team()
    await limiter.publish_limits(team, None, Limits(tokens_per_day=10))
    who = principal(team, team=Limits(tokens_per_day=1000))
    with pytest.raises(BudgetExceeded):
        await limiter.admit(who, tokens=100, usd=ZERO, request_id="published")
    clock.advance(601)  # past the published record's validity: the database copy rules again
    await limiter.admit(who, tokens=100, usd=ZERO, request_id="fallback")


async def test_all_keys_of_a_team_share_one_cluster_hash_slot(make_limiter: MakeLimiter) -> None:
    from app.budgets.windows import windows_at

    team = "acme-{weird}-team"
    ws = windows_at(team, "key-1", START)
    tk = team_keys(team)
    names = [
        *ws.period_keys,
        tk.team_limits,
        tk.key_limits("key-1"),
        tk.reservations,
        tk.expiries,
        tk.inflight,
    ]
    tags = {name[name.index("{") + 1 : name.index("}")] for name in names}
    assert tags == {"acme-{weird"}  # one tag for all (Redis hashes up to the first '}')
    limiter = make_limiter(FakeClock())
    await limiter.admit(
        principal(team, "key-1", team=Limits(tokens_per_day=5)), tokens=1, usd=ZERO, request_id="x"
    )


async def test_a_retried_reserve_with_the_same_id_holds_the_amount_once(make_limiter: MakeLimiter) -> None:
    """A reply lost on a broken connection makes redis-py send the script again: no double hold."""
    from app.budgets.limits import limits_vector
    from app.budgets.windows import amounts_vector, windows_at

    clock = FakeClock()
    limiter = make_limiter(clock)
    who = principal(new_team(), team=Limits(tokens_per_day=1000))
    ws = windows_at(who.team_id, who.key_id, clock())
    for _ in range(2):
        outcome = await limiter.store.reserve(
            ws,
            "same-id",
            amounts_vector(600, 0),
            limits_vector(who.team_limits),
            limits_vector(who.key_limits),
            now=clock(),
            expires_at=clock() + 60,
            state_ttl_s=120,
            replace=False,
        )
        assert outcome.ok
    assert (await limiter.status(who))["team"]["tokens_per_day"]["reserved"] == 600
    await limiter.store.settle(ws, "same-id", amounts_vector(100, 0), now=clock(), grace_s=120)
    day = (await limiter.status(who))["team"]["tokens_per_day"]
    assert (day["used"], day["reserved"]) == (100, 0)


async def test_an_admit_cancelled_in_flight_leaves_nothing_reserved(redis_url: str) -> None:
    """A client that goes away while its admit is on the wire must not hold budget until expiry.
    (Redis only: the memory store's admit has no point at which it can be cancelled.)"""
    client = connect_budget_redis(redis_url)
    limiter = BudgetLimiter(RedisStore(client), clock=FakeClock(), wait_ms=0)
    who = principal(new_team(), team=Limits(tokens_per_day=1000))
    task = asyncio.create_task(limiter.admit(who, tokens=700, usd=ZERO, request_id="gone"))
    for _ in range(3):  # let the call leave: queued, flushed, written to the socket
        await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    for _ in range(500):
        if (await limiter.status(who))["team"]["tokens_per_day"]["reserved"] == 0:
            break
        await asyncio.sleep(0.01)
    assert (await limiter.status(who))["team"]["tokens_per_day"]["reserved"] == 0
    await limiter.admit(who, tokens=1000, usd=ZERO, request_id="next")
    await limiter.aclose()
    await client.aclose()


# ---- idempotency per reservation id -----------------------------------------------------------------


async def _reserve(limiter: BudgetLimiter, who: object, rid: str, tokens: int, *, replace: bool = False) -> object:
    clock = limiter.clock
    ws = windows_at(who.team_id, who.key_id, clock())  # type: ignore[attr-defined]
    return await limiter.store.reserve(
        ws,
        rid,
        amounts_vector(tokens, 0),
        limits_vector(who.team_limits),  # type: ignore[attr-defined]
        limits_vector(who.key_limits),  # type: ignore[attr-defined]
        now=clock(),
        expires_at=clock() + 60,
        state_ttl_s=120,
        replace=replace,
    )


async def test_a_settled_id_can_be_neither_admitted_nor_settled_again(make_limiter: MakeLimiter) -> None:
    """The order a stall can produce: the release of a failed admit lands before the admit itself."""
    clock = FakeClock()
    limiter = make_limiter(clock)
    who = principal(new_team(), team=Limits(tokens_per_day=1000))
    ws = windows_at(who.team_id, who.key_id, clock())
    assert await limiter.store.settle(ws, "released-first", amounts_vector(0, 0, 0), now=clock(), grace_s=120)
    with pytest.raises(AlreadySettled):
        await _reserve(limiter, who, "released-first", 400)
    assert await limiter.store.settle(ws, "done", amounts_vector(30, 0), now=clock(), grace_s=120)
    assert not await limiter.store.settle(ws, "done", amounts_vector(30, 0), now=clock(), grace_s=120)
    day = (await limiter.status(who))["team"]["tokens_per_day"]
    assert (day["used"], day["reserved"]) == (30, 0)


async def test_a_repeated_readmit_holds_the_new_amount_once(make_limiter: MakeLimiter) -> None:
    clock = FakeClock()
    limiter = make_limiter(clock)
    who = principal(new_team(), team=Limits(tokens_per_day=1000))
    admission = await limiter.admit(who, tokens=200, usd=ZERO, request_id="r")
    for _ in range(2):  # the second as a resend whose first reply was lost
        outcome = await _reserve(limiter, who, admission.reservation_id, 500, replace=True)
        assert outcome.ok  # type: ignore[attr-defined]
    assert (await limiter.status(who))["team"]["tokens_per_day"]["reserved"] == 500
    await limiter.settle(admission, tokens=50, usd=ZERO)  # the old handle's id: frees what is held
    day = (await limiter.status(who))["team"]["tokens_per_day"]
    assert (day["used"], day["reserved"]) == (50, 0)
    with pytest.raises(AlreadySettled):  # a readmit arriving after the settle changes nothing
        await _reserve(limiter, who, admission.reservation_id, 500, replace=True)


async def test_an_expired_reservation_settled_late_counts_once(make_limiter: MakeLimiter) -> None:
    clock = FakeClock()
    limiter = make_limiter(clock, reservation_ttl_s=60)
    who = principal(new_team(), team=Limits(tokens_per_day=1000))
    admission = await limiter.admit(who, tokens=400, usd=ZERO, request_id="slow")
    clock.advance(61)
    assert (await limiter.status(who))["team"]["tokens_per_day"]["reserved"] == 0  # released on expiry
    await limiter.settle(admission, tokens=70, usd=ZERO)
    ws = windows_at(who.team_id, who.key_id, clock())
    assert not await limiter.store.settle(ws, admission.reservation_id, amounts_vector(70, 0), now=clock(), grace_s=9)
    assert (await limiter.status(who))["team"]["tokens_per_day"]["used"] == 70


async def test_an_admit_reaching_redis_after_its_deadline_changes_nothing(redis_url: str) -> None:
    client = connect_budget_redis(redis_url)
    late = RedisStore(client, wall=lambda: time.time() - 5)  # as if it had waited 5 s in a stalled Redis
    limiter = BudgetLimiter(late, clock=FakeClock(), wait_ms=0)
    who = principal(new_team(), team=Limits(tokens_per_day=1000))
    with pytest.raises(BudgetBackendUnavailable):
        await limiter.admit(who, tokens=400, usd=ZERO, request_id="late")
    with pytest.raises(AdmitTooLate):
        await _reserve(limiter, who, "late-2", 400)
    on_time = BudgetLimiter(RedisStore(client), clock=FakeClock(), wait_ms=0)
    day = (await on_time.status(who))["team"]["tokens_per_day"]
    assert (day["used"], day["reserved"]) == (0, 0)
    await limiter.aclose()
    await on_time.aclose()
    await client.aclose()


# ---- capping the output to the budget left ------------------------------------------------------------


async def test_the_output_cap_policy_admits_with_what_is_left(make_limiter: MakeLimiter) -> None:
    clock = FakeClock()
    limiter = make_limiter(clock)
    team = new_team()
    who = principal(team, team=Limits(tokens_per_day=1000, usd_per_day="1"), cap_output_to_budget=True)
    spent = await limiter.admit(who, tokens=900, usd=Decimal("0.5"), request_id="spent")
    await limiter.settle(spent, tokens=900, usd=Decimal("0.5"))

    # 50 input + 250 output does not fit 100 tokens left: the output is capped to 50.
    capped = await limiter.admit(
        who, tokens=300, usd=Decimal("0.3"), request_id="capped", output_tokens=250, output_usd=Decimal("0.25")
    )
    assert capped.output_cap == 50 and capped.tokens == 100 and capped.usd == Decimal("0.1")
    assert capped.headers_for("openai")["x-tollway-budget-reserved-tokens"] == "100"
    with pytest.raises(BudgetExceeded):  # nothing left for another request's input
        await limiter.admit(who, tokens=300, usd=ZERO, request_id="next", output_tokens=250)
    await limiter.settle(capped, tokens=100, usd=Decimal("0.1"))

    # The same request from a team without the policy is refused, as before.
    strict = principal(team, "key-b", team=Limits(tokens_per_day=2000))
    with pytest.raises(BudgetExceeded):
        await limiter.admit(strict, tokens=3000, usd=ZERO, request_id="strict", output_tokens=2500)


async def test_the_output_cap_also_respects_usd_windows(make_limiter: MakeLimiter) -> None:
    limiter = make_limiter(FakeClock())
    who = principal(new_team(), team=Limits(usd_per_day="0.01"), cap_output_to_budget=True)
    # $0.002 of input + 1,000 output tokens at $0.00002 each ($0.02): only 400 output tokens fit.
    capped = await limiter.admit(
        who, tokens=1100, usd=Decimal("0.022"), request_id="u", output_tokens=1000, output_usd=Decimal("0.02")
    )
    assert capped.output_cap == 400 and capped.usd == Decimal("0.01")
    with pytest.raises(BudgetExceeded):  # the input alone no longer fits
        await limiter.admit(
            who, tokens=1100, usd=Decimal("0.022"), request_id="v", output_tokens=1000, output_usd=Decimal("0.02")
        )
