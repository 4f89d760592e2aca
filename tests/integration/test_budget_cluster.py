"""The budget scripts on Redis Cluster (a private one-node cluster owning every slot).

Every key a script touches is declared, and all of a team's keys share its hash tag, so no script
call may fail with CROSSSLOT; the cluster client routes each call by its first key.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal

import pytest
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ResponseError

from app.auth.principal import Limits
from app.budgets.limiter import BudgetExceeded, BudgetLimiter
from app.budgets.redis_store import RedisStore
from app.budgets.store import PendingSettle
from tests.integration.test_budget_support import FakeClock, RedisServer, principal

ZERO = Decimal(0)


@pytest.fixture(scope="module")
def cluster_server() -> Iterator[RedisServer]:
    with RedisServer(cluster=True) as server:
        yield server


@pytest.fixture
async def cluster(cluster_server: RedisServer) -> AsyncIterator[RedisCluster]:
    client = RedisCluster.from_url(cluster_server.url)
    yield client
    await client.aclose()


async def test_admit_settle_status_publish_and_reconcile_on_a_cluster(cluster: RedisCluster) -> None:
    clock = FakeClock()
    limiter = BudgetLimiter(RedisStore(cluster), clock=clock, wait_ms=0)
    team = uuid.uuid4().hex
    who = principal(team, "key-1", team=Limits(tokens_per_day=1_000), key=Limits(requests_per_minute=5))

    admission = await limiter.admit(who, tokens=400, usd=ZERO, request_id="a")
    admission = await limiter.readmit(admission, tokens=600, usd=ZERO)
    await limiter.settle(admission, tokens=500, usd=ZERO)
    status = await limiter.status(who)
    assert (status["team"]["tokens_per_day"]["used"], status["key"]["requests_per_minute"]["used"]) == (
        500,
        1,
    )

    await limiter.publish_limits(team, None, Limits(tokens_per_day=600))
    with pytest.raises(BudgetExceeded) as refused:
        await limiter.admit(who, tokens=200, usd=ZERO, request_id="b")
    assert refused.value.limit == 600

    # Reconciliation (what fail-open replays) goes through the cluster client too.
    windows = admission.windows
    assert windows is not None
    pending = PendingSettle("deferred", "key-1", windows.period_keys, (int(clock()) + 3600,) * 3, (1, 50, 50, 50, 0, 0))
    limiter.ledger.add_settle(team, pending)
    assert await limiter.reconcile_now()
    limiter.ledger.add_settle(team, pending)  # the same settle again (its first reply lost): a no-op
    assert await limiter.reconcile_now()
    assert (await limiter.status(who))["team"]["tokens_per_day"]["used"] == 550
    await limiter.aclose()


async def test_the_cluster_really_refuses_keys_of_two_slots(cluster: RedisCluster) -> None:
    """The check above means something: a script declaring keys of two teams is refused."""
    node = cluster.get_default_node()
    with pytest.raises(ResponseError, match="same slot"):
        await cluster.execute_command(
            "EVAL", "return 1", 2, "tw:{team-a}:inf", "tw:{team-b}:inf", target_nodes=node
        )
