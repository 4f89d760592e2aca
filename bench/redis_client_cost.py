"""CPU per budget admit+settle pair with redis-py configured different ways, measured side by side.

    python -m bench.redis_client_cost --redis-url redis://127.0.0.1:6379/13 --rounds 5

Each variant runs the real ``BudgetLimiter`` over the real ``RedisStore`` (the Lua scripts of the
budget path), ``--concurrency`` closed-loop tasks for ``--seconds``, in interleaved rounds (so a slow
phase of a shared machine hits every variant). Reported: this process's CPU (user + system) per
pair, median and range over the rounds. Variants:

* ``python-pack`` — ``connect_budget_redis`` as it was: ``BlockingConnectionPool`` and redis-py's
  own (pure-Python) command packer;
* ``blocking`` — the client the gateway builds (``connect_budget_redis``: ``BlockingConnectionPool``,
  commands packed by hiredis);
* ``plain-pool`` — the same options on redis-py's plain ``ConnectionPool`` (no wait for a free
  connection: the pool raises when all are in use);
* ``no-hooks`` — ``blocking`` with redis-py 8's per-command observability recorders replaced by
  no-ops (what the hooks cost while OpenTelemetry is not configured);
* ``no-retry`` — ``blocking`` with ``Retry(NoBackoff(), 0)``: what the retry wrapper costs.

Each team id is random, and every key expires: safe on a shared Redis (nothing is flushed).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from decimal import Decimal
from typing import Any

import redis.asyncio as aioredis
import redis.asyncio.client as redis_client
from redis.asyncio.connection import Connection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from app.budgets.limiter import BudgetLimiter
from app.budgets.redis_store import RedisStore, connect_budget_redis
from bench.budget_bench import bench_principal


async def _no_record(*args: Any, **kwargs: Any) -> None:
    return None


@contextmanager
def hooks_off() -> Iterator[None]:
    saved = redis_client.record_operation_duration
    redis_client.record_operation_duration = _no_record  # type: ignore[assignment]
    try:
        yield
    finally:
        redis_client.record_operation_duration = saved  # type: ignore[assignment]


@contextmanager
def nothing() -> Iterator[None]:
    yield


def python_pack(url: str) -> aioredis.Redis:
    client = connect_budget_redis(url)
    client.connection_pool.connection_class = Connection
    return client


def plain_pool(url: str) -> aioredis.Redis:
    blocking = connect_budget_redis(url)
    kwargs = dict(blocking.connection_pool.connection_kwargs)
    pool = aioredis.ConnectionPool(
        connection_class=blocking.connection_pool.connection_class, max_connections=64, **kwargs
    )
    return aioredis.Redis.from_pool(pool)


VARIANTS: dict[str, tuple[Callable[[str], Any], Callable[[], Any]]] = {
    "python-pack": (python_pack, nothing),
    "blocking": (connect_budget_redis, nothing),
    "plain-pool": (plain_pool, nothing),
    "no-hooks": (connect_budget_redis, hooks_off),
    "no-retry": (lambda url: connect_budget_redis(url, retry=Retry(NoBackoff(), 0)), nothing),
}


async def one_round(limiter: BudgetLimiter, concurrency: int, seconds: float) -> float:
    who = bench_principal("bench-key")
    pairs = 0
    counter = iter(range(10**12))
    stop = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal pairs
        while time.perf_counter() < stop:
            admission = await limiter.admit(who, tokens=2_000, usd=Decimal("0.02"), request_id=f"b{next(counter)}")
            await limiter.settle(admission, tokens=1_200, usd=Decimal("0.012"))
            pairs += 1

    cpu = time.process_time()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return (time.process_time() - cpu) / max(1, pairs) * 1e6


async def main(args: argparse.Namespace) -> dict[str, Any]:
    names = args.variants or list(VARIANTS)
    clients = {name: VARIANTS[name][0](args.redis_url) for name in names}
    limiters = {
        name: BudgetLimiter(RedisStore(client), mode="strict", wait_ms=250, reservation_ttl_s=900)
        for name, client in clients.items()
    }
    samples: dict[str, list[float]] = {name: [] for name in names}
    try:
        for name in names:  # warm-up: connections, script cache
            with VARIANTS[name][1]():
                await one_round(limiters[name], args.concurrency, 0.5)
        for _ in range(args.rounds):
            for name in names:
                with VARIANTS[name][1]():
                    samples[name].append(await one_round(limiters[name], args.concurrency, args.seconds))
    finally:
        for name in names:
            await limiters[name].aclose()
            await clients[name].aclose()
    return {
        name: {
            "cpu_us_per_pair_median": round(statistics.median(values), 1),
            "min": round(min(values), 1),
            "max": round(max(values), 1),
        }
        for name, values in samples.items()
    }


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/13")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=None)
    args = parser.parse_args()
    import uvloop

    result = uvloop.run(main(args))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    cli()
