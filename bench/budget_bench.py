"""Budget admission + settlement against a local Redis: throughput per process, and added latency.

    python -m bench.budget_bench --redis-url redis://127.0.0.1:6379/14

Three phases, one process, asyncio:

1. throughput — 64 concurrent tasks loop admit → settle for ``--seconds``; pairs/s. (Latencies here
   include waiting for the event loop behind 63 other tasks, so they are reported but are not the
   latency a request pays.)
2. added latency — one request at a time: the admit and settle round trips a request actually adds.
3. added latency under load — an open-loop arrival rate (``--rate`` pairs/s, default 2,000) with
   concurrency up to 64, the realistic case of a busy gateway process below saturation.

The principal has limits in four windows (team tokens/day, requests/minute, USD/month; key
tokens/minute), so every step reads and writes like a real limited team. Results go to
``bench/results/budgets.json``. The database given is flushed first: use a scratch one.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import time
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

from app.auth.principal import Limits, Principal
from app.budgets.limiter import BudgetLimiter
from app.budgets.redis_store import RedisStore, connect_budget_redis

RESULTS = Path(__file__).parent / "results" / "budgets.json"


def percentile(samples: list[float], p: float) -> float:
    if not samples:
        return float("nan")
    ordered = sorted(samples)
    index = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[index]


def summary_ms(samples: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(percentile(samples, 50) * 1000, 3),
        "p99_ms": round(percentile(samples, 99) * 1000, 3),
        "mean_ms": round(statistics.fmean(samples) * 1000, 3) if samples else float("nan"),
        "n": len(samples),
    }


def bench_principal(key: str) -> Principal:
    return Principal(
        team_id=f"bench-{uuid.uuid4().hex[:8]}",
        team_name="bench",
        key_id=key,
        key_prefix="tw-bench",
        team_limits=Limits(tokens_per_day=10**14, requests_per_minute=10**12, usd_per_month="1000000"),
        key_limits=Limits(tokens_per_minute=10**13),
    )


class Recorder:
    def __init__(self) -> None:
        self.admit: list[float] = []
        self.settle: list[float] = []
        self.pairs = 0

    async def pair(self, limiter: BudgetLimiter, who: Principal, n: int) -> None:
        t0 = time.perf_counter()
        admission = await limiter.admit(who, tokens=2_000, usd=Decimal("0.02"), request_id=f"b{n}")
        t1 = time.perf_counter()
        await limiter.settle(admission, tokens=1_200, usd=Decimal("0.012"))
        t2 = time.perf_counter()
        self.admit.append(t1 - t0)
        self.settle.append(t2 - t1)
        self.pairs += 1


async def closed_loop(
    limiter: BudgetLimiter, who: Principal, concurrency: int, seconds: float
) -> dict[str, Any]:
    recorder = Recorder()
    stop = time.perf_counter() + seconds
    counter = iter(range(10**12))

    async def worker() -> None:
        while time.perf_counter() < stop:
            await recorder.pair(limiter, who, next(counter))

    started = time.perf_counter()
    cpu_started = time.process_time()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu_started
    return {
        "concurrency": concurrency,
        "seconds": round(elapsed, 2),
        "pairs": recorder.pairs,
        "pairs_per_s": round(recorder.pairs / elapsed),
        # CPU the gateway process spent per pair: capacity of one fully available core.
        "cpu_us_per_pair": round(cpu / max(1, recorder.pairs) * 1e6, 1),
        "pairs_per_cpu_second": round(recorder.pairs / cpu) if cpu else None,
        "admit": summary_ms(recorder.admit),
        "settle": summary_ms(recorder.settle),
    }


async def open_loop(limiter: BudgetLimiter, who: Principal, rate: float, seconds: float) -> dict[str, Any]:
    recorder = Recorder()
    slots = asyncio.Semaphore(64)
    tasks: set[asyncio.Task[None]] = set()
    started = time.perf_counter()
    n = 0
    dropped = 0

    async def one(i: int) -> None:
        try:
            await recorder.pair(limiter, who, i)
        finally:
            slots.release()

    while (now := time.perf_counter()) - started < seconds:
        due = started + n / rate
        if due > now:
            await asyncio.sleep(due - now)
        if slots.locked():
            dropped += 1  # more than 64 in flight: the process is saturated at this rate
        else:
            await slots.acquire()
            task = asyncio.create_task(one(n))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        n += 1
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - started
    return {
        "target_rate_pairs_per_s": rate,
        "achieved_pairs_per_s": round(recorder.pairs / elapsed),
        "dropped": dropped,
        "admit": summary_ms(recorder.admit),
        "settle": summary_ms(recorder.settle),
    }


async def ping_rtt(limiter: BudgetLimiter, count: int = 2000) -> dict[str, float]:
    store = limiter.store
    assert isinstance(store, RedisStore)
    samples = []
    for _ in range(count):
        t0 = time.perf_counter()
        await store.redis.ping()
        samples.append(time.perf_counter() - t0)
    return summary_ms(samples)


def machine() -> dict[str, Any]:
    model = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": model,
        "load_average_1m_at_start": round(os.getloadavg()[0], 2),
        "cores": os.cpu_count(),
        "arch": platform.machine(),
        "python": platform.python_version(),
        "os": platform.platform(),
    }


async def main(args: argparse.Namespace) -> dict[str, Any]:
    redis = connect_budget_redis(args.redis_url)
    await redis.flushdb()
    server = await redis.info("server")
    host = machine()
    await redis.config_resetstat()
    limiter = BudgetLimiter(RedisStore(redis), mode="strict", wait_ms=250, reservation_ttl_s=900)
    try:
        who = bench_principal("bench-key")
        await closed_loop(limiter, who, args.concurrency, 1.0)  # warm-up: connections, script cache
        throughput = [
            await closed_loop(limiter, who, args.concurrency, args.seconds) for _ in range(args.rounds)
        ]
        best = max(throughput, key=lambda r: r["pairs_per_s"])
        sequential = await closed_loop(limiter, who, 1, args.seconds)
        loaded = await open_loop(limiter, who, args.rate, args.seconds)
        rtt = await ping_rtt(limiter)
        stats = await redis.info("commandstats")
    finally:
        await limiter.aclose()
        await redis.flushdb()
        await redis.aclose()
    return {
        "command": f"python -m bench.budget_bench --redis-url {args.redis_url}",
        "machine": host,
        "redis_version": server.get("redis_version"),
        "throughput": {"rounds": throughput, "best_pairs_per_s": best["pairs_per_s"]},
        "added_latency_sequential": sequential,
        "added_latency_under_load": loaded,
        "redis_ping_rtt": rtt,
        # Lua time inside Redis, averaged over admits and settles (server CPU per script call).
        "redis_evalsha_usec_per_call": stats.get("cmdstat_evalsha", {}).get("usec_per_call"),
        "targets": {"pairs_per_s": 5000, "p50_ms": 0.5, "p99_ms": 2.0},
    }


def cli() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/14")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rate", type=float, default=2000.0, help="open-loop arrival rate for phase 3")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    result = asyncio.run(main(args))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    tp = result["throughput"]["best_pairs_per_s"]
    seq = result["added_latency_sequential"]
    load = result["added_latency_under_load"]
    cpu = max(result["throughput"]["rounds"], key=lambda r: r["pairs_per_s"])["cpu_us_per_pair"]
    print(f"throughput (c={args.concurrency}): {tp} admit+settle pairs/s per process ({cpu} µs CPU per pair)")
    for label, phase in (("sequential", seq), (f"open loop {args.rate:.0f}/s", load)):
        print(
            f"{label:>18}: admit p50 {phase['admit']['p50_ms']} ms p99 {phase['admit']['p99_ms']} ms; "
            f"settle p50 {phase['settle']['p50_ms']} ms p99 {phase['settle']['p99_ms']} ms"
        )
    print(f"redis PING round trip: p50 {result['redis_ping_rtt']['p50_ms']} ms")
    print(f"results written to {args.output}")


if __name__ == "__main__":
    cli()
