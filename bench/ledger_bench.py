"""Ledger write throughput into PostgreSQL through the Recorder, and what recording costs a request.

    python -m bench.ledger_bench --database-url postgresql+asyncpg://postgres@127.0.0.1:5432/test

Creates a throwaway database next to the one in the URL (and drops it afterwards), migrates it, and
measures:

1. ``record()`` — the request path's whole cost of recording: nanoseconds per call.
2. Writer CPU — what one batch insert costs the shared event loop, in CPU time.
3. Burst throughput — N events recorded as fast as a producer can, until every row is committed:
   events/s, batch sizes, flush (one batch insert) latency p50/p99.
4. Sustained load — events at a fixed rate for a while: the queue must stay flat, and an event-loop
   lag probe (a task that asks to wake every millisecond) shows how much the writer's work on the
   shared event loop delays everything else, compared with the same load with recording off.

Writes ``bench/results/ledger.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
from sqlalchemy import func, select
from sqlalchemy.engine import make_url

from app.db.engine import create_engine
from app.db.migrate import upgrade
from app.db.tables import usage_events
from app.ledger.events import UsageEvent
from app.ledger.inserts import CoreInserter, PostgresInserter
from app.ledger.recorder import Recorder
from app.ledger.spool import DiskSpool

RESULTS = Path(__file__).with_name("results") / "ledger.json"


def request_id() -> str:
    # The gateway's format: time-ordered, so inserts append to the primary-key index.
    return f"req_{time.time_ns():016x}{os.urandom(6).hex()}"


def make_event() -> UsageEvent:
    return UsageEvent(
        request_id=request_id(),
        team_id="5b0f3c52-8a4e-4c1e-9a57-3f0f8f7f2a11",
        key_id="0d9e6a1b-2c3d-4e5f-8a9b-0c1d2e3f4a5b",
        client_format="anthropic",
        requested_model="auto",
        served_model="claude-haiku-5-5",
        provider="anthropic",
        route_reason="cheapest adequate: small",
        input_tokens=1834,
        output_tokens=312,
        cache_read_tokens=4096,
        cost_usd=Decimal("0.0003804960"),
        uncached_cost_usd=Decimal("0.0007494000"),
        latency_ms=742.1,
        ttft_ms=181.4,
        stop_reason="end_turn",
        streamed=True,
    )


def percentile(values: list[float], p: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def count_rows(engine: Any) -> int:
    async with engine.connect() as conn:
        return int(await conn.scalar(select(func.count()).select_from(usage_events)) or 0)


# ---- 1. record() -----------------------------------------------------------------------------------


def bench_record_call(engine: Any, spool_dir: Path, calls: int) -> dict[str, float]:
    """Time record() alone: a recorder whose writer is not running, so nothing else competes."""
    recorder = Recorder(engine, spool=DiskSpool(spool_dir), queue_max=calls + 1)
    events = [make_event() for _ in range(calls)]
    gc.collect()
    started = time.perf_counter_ns()
    for event in events:
        recorder.record(event)
    mean_ns = (time.perf_counter_ns() - started) / calls
    # Per-call samples for the tail (timer overhead included, so this overstates the cost).
    samples = []
    for event in events[: min(calls, 50_000)]:
        t0 = time.perf_counter_ns()
        recorder.record(event)
        samples.append(time.perf_counter_ns() - t0)
    return {
        "calls": calls,
        "mean_us": round(mean_ns / 1000, 3),
        "p99_us_with_timer_overhead": round(percentile([float(s) for s in samples], 99) / 1000, 3),
    }


# ---- 2. writer CPU -----------------------------------------------------------------------------------


async def bench_writer_cpu(url: str, batches: int = 20, size: int = 500) -> dict[str, Any]:
    """CPU the writer spends on the shared event loop per batch (process time, so other processes
    on the machine do not count), for the asyncpg path and the generic SQLAlchemy path."""
    engine = create_engine(url)
    results: dict[str, Any] = {"batch_size": size}
    try:
        for inserter in (PostgresInserter(engine), CoreInserter(engine)):
            await inserter.insert([make_event() for _ in range(size)])  # warm: connect, prepare
            events = [make_event() for _ in range(batches * size)]
            gc.collect()
            cpu = time.process_time()
            for i in range(batches):
                await inserter.insert(events[i * size : (i + 1) * size])
            per_batch_ms = (time.process_time() - cpu) / batches * 1000
            results[type(inserter).__name__] = {
                "cpu_ms_per_batch": round(per_batch_ms, 2),
                "cpu_us_per_event": round(per_batch_ms * 1000 / size, 2),
            }
    finally:
        await engine.dispose()
    return results


# ---- 3. burst --------------------------------------------------------------------------------------


async def bench_burst(url: str, spool_dir: Path, events: int, batch_size: int) -> dict[str, Any]:
    engine = create_engine(url)
    recorder = Recorder(engine, batch_size=batch_size, flush_interval_s=0.2, spool=DiskSpool(spool_dir))
    recorder.start()
    batch = [make_event() for _ in range(events)]
    before = await count_rows(engine)
    started = time.perf_counter()
    for i, event in enumerate(batch):
        recorder.record(event)
        if i % 200 == 0:
            await asyncio.sleep(0)  # a producer that yields, like request handlers do
    produced = time.perf_counter() - started
    while recorder.stats.written + recorder.stats.duplicates < events:  # noqa: ASYNC110 (a counter: no event to wait on)
        await asyncio.sleep(0.005)
    elapsed = time.perf_counter() - started
    await recorder.aclose()
    stored = await count_rows(engine) - before
    await engine.dispose()
    flushes = list(recorder.stats.flush_seconds)
    sizes = list(recorder.stats.batch_sizes)
    return {
        "events": events,
        "rows_committed": stored,
        "seconds": round(elapsed, 3),
        "events_per_s": round(events / elapsed),
        "producer_seconds": round(produced, 3),
        "batch_size_setting": batch_size,
        "batches": len(sizes),
        "batch_size_mean": round(statistics.mean(sizes), 1),
        "batch_size_max": max(sizes),
        "flush_ms_p50": round(percentile(flushes, 50) * 1000, 2),
        "flush_ms_p99": round(percentile(flushes, 99) * 1000, 2),
        "flush_ms_max": round(max(flushes) * 1000, 2),
        "spooled": recorder.stats.spooled,
    }


# ---- 4. sustained, with an event-loop lag probe ------------------------------------------------------


async def lag_probe(stop: asyncio.Event, lags: list[float], interval_s: float = 0.001) -> None:
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        due = loop.time() + interval_s
        await asyncio.sleep(interval_s)
        lags.append(max(0.0, loop.time() - due))


async def watch_depth(stop: asyncio.Event, recorder: Recorder) -> int:
    deepest = 0
    while not stop.is_set():
        deepest = max(deepest, recorder.queue_depth)
        await asyncio.sleep(0.01)
    return deepest


async def produce(rate: float, seconds: float, record: Callable[[UsageEvent], None]) -> int:
    """Events at ``rate``/s, in ticks of about 5 ms, built on the spot like the pipeline does."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    sent = 0
    while (elapsed := loop.time() - started) < seconds:
        due = int(rate * elapsed)  # catch up after a late tick instead of drifting below the rate
        while sent < due:
            record(make_event())
            sent += 1
        await asyncio.sleep(0.005)
    return sent


async def bench_sustained(url: str, spool_dir: Path, rate: float, seconds: float, batch_size: int) -> dict[str, Any]:
    results: dict[str, Any] = {"rate_per_s": rate, "seconds": seconds}
    for mode in ("off", "on"):
        engine = create_engine(url)
        recorder = Recorder(engine, batch_size=batch_size, flush_interval_s=0.2, spool=DiskSpool(spool_dir))
        if mode == "on":
            recorder.start()
            record: Callable[[UsageEvent], None] = recorder.record
        else:

            def record(event: UsageEvent) -> None:  # the pipeline with recording switched off
                del event

        before = await count_rows(engine)
        stop = asyncio.Event()
        lags: list[float] = []
        probe = asyncio.create_task(lag_probe(stop, lags))
        watcher = asyncio.create_task(watch_depth(stop, recorder))
        sent = await produce(rate, seconds, record)
        stop.set()
        await probe
        depth_max = await watcher
        await recorder.aclose()
        flushes = list(recorder.stats.flush_seconds)
        results[f"recording_{mode}"] = {
            "events": sent,
            "rows_committed": await count_rows(engine) - before,
            "loop_lag_ms_p50": round(percentile(lags, 50) * 1000, 3),
            "loop_lag_ms_p99": round(percentile(lags, 99) * 1000, 3),
            "loop_lag_ms_max": round(max(lags) * 1000, 3),
            "queue_depth_max": depth_max,
            "flush_ms_p99": round(percentile(flushes, 99) * 1000, 2) if flushes else None,
            "batch_size_mean": round(statistics.mean(recorder.stats.batch_sizes), 1)
            if recorder.stats.batch_sizes
            else None,
        }
        await engine.dispose()
    return results


# ---- driver ----------------------------------------------------------------------------------------


async def create_database(server_url: str, name: str) -> str:
    plain = make_url(server_url).set(drivername="postgresql").render_as_string(hide_password=False)
    conn = await asyncpg.connect(plain)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
        version = await conn.fetchval("SHOW server_version")
    finally:
        await conn.close()
    return str(version)


async def drop_database(server_url: str, name: str) -> None:
    plain = make_url(server_url).set(drivername="postgresql").render_as_string(hide_password=False)
    conn = await asyncpg.connect(plain)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


async def run(args: argparse.Namespace) -> dict[str, Any]:
    name = f"tollway_bench_{uuid.uuid4().hex[:10]}"
    pg_version = await create_database(args.database_url, name)
    url = make_url(args.database_url).set(database=name).render_as_string(hide_password=False)
    try:
        await asyncio.to_thread(upgrade, url)
        with tempfile.TemporaryDirectory() as tmp:
            spool = Path(tmp)
            engine = create_engine(url)
            record_cost = bench_record_call(engine, spool / "record", args.record_calls)
            await engine.dispose()
            writer_cpu = await bench_writer_cpu(url)
            bursts = [await bench_burst(url, spool / f"burst{b}", args.events, b) for b in args.batch_sizes]
            sustained = await bench_sustained(url, spool / "sustained", args.rate, args.seconds, 500)
    finally:
        await drop_database(args.database_url, name)
    return {
        "benchmark": "ledger",
        "command": "python -m bench.ledger_bench --database-url " + args.database_url,
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "arch": platform.machine(),
            "python": platform.python_version(),
            "postgres": pg_version,
            "system": platform.platform(),
        },
        "record_call": record_cost,
        "writer_cpu": writer_cpu,
        "burst": bursts,
        "sustained": sustained,
        "target_events_per_s": 5000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", default="postgresql+asyncpg://postgres@127.0.0.1:5432/test")
    parser.add_argument("--events", type=int, default=100_000, help="events per burst run")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[100, 500, 1000])
    parser.add_argument("--rate", type=float, default=5000, help="events/s in the sustained run")
    parser.add_argument("--seconds", type=float, default=10, help="length of each sustained run")
    parser.add_argument("--record-calls", type=int, default=200_000)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    results = asyncio.run(run(args))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
