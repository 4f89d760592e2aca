"""Gateway-side experiments, injected with ``python -m bench.run --gateway-prelude CODE``.

The prelude runs in the gateway process before ``tollway serve`` (one worker: the app runs in that
same process), so these functions patch or instrument Tollway without editing it:

* ``stall_probe(path)``: an event-loop lag probe (a task asking to wake every millisecond, recording
  how late it wakes) and the duration of every garbage collection, by generation, written to
  ``path`` as JSON once a second. Attributes tail latency to loop stalls and to GC pauses.
* ``quiet_logs()``: what one log line per request would save: the per-upstream-call ``httpx`` INFO
  record and the ``uvicorn.access`` record (re-enabled by ``configure_logging``) are turned off.
* ``tuned_gc()``: ``gc.freeze()`` after the imports, and a gen-0 threshold of 20,000 allocations.
* ``no_env_proxy_lookup()``: aiohttp sessions without ``trust_env`` (see the function).

Example::

    python -m bench.run --configs everything-on --concurrencies 32 --rounds 1 --no-long-streams \\
        --no-scaling --soak 0 --slow-streams 0 --no-profile --no-docs --out-dir /tmp/exp \\
        --gateway-prelude "from bench.experiments import quiet_logs; quiet_logs()"
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import time
from pathlib import Path
from typing import Any


def stall_probe(path: str) -> None:
    import app.main
    import app.services

    gc_pauses: dict[int, list[float]] = {0: [], 1: [], 2: []}
    lags: list[float] = []
    started: dict[str, float] = {}
    tasks: list[asyncio.Task[None]] = []

    def on_gc(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            started["t"] = time.perf_counter()
        elif "t" in started:
            gc_pauses[info["generation"]].append(time.perf_counter() - started.pop("t"))

    gc.callbacks.append(on_gc)

    async def probe() -> None:
        out = Path(path)
        last_write = time.monotonic()
        while True:
            before = time.perf_counter()
            await asyncio.sleep(0.001)
            lags.append(time.perf_counter() - before - 0.001)
            if time.monotonic() - last_write > 1.0:
                last_write = time.monotonic()
                text = json.dumps(_stall_summary(lags, gc_pauses))
                await asyncio.to_thread(out.write_text, text)

    original = app.services.build_services

    async def build_services(*args: Any, **kwargs: Any) -> Any:
        services = await original(*args, **kwargs)
        # Not services.spawn(): shutdown would wait for a task that never ends.
        tasks.append(asyncio.get_running_loop().create_task(probe()))
        return services

    app.services.build_services = build_services
    app.main.build_services = build_services


def _stall_summary(lags: list[float], gc_pauses: dict[int, list[float]]) -> dict[str, Any]:
    ordered = sorted(lags)

    def pct(q: float) -> float:
        return round(ordered[int((len(ordered) - 1) * q)] * 1000, 3) if ordered else 0.0

    return {
        "loop_lag_samples": len(lags),
        "loop_lag_ms": {"p50": pct(0.5), "p99": pct(0.99), "p999": pct(0.999), "max": pct(1.0)},
        "loop_lags_over_10ms": sum(1 for x in lags if x > 0.010),
        "loop_lags_over_50ms": sum(1 for x in lags if x > 0.050),
        "gc": {
            str(gen): {
                "count": len(p),
                "total_ms": round(sum(p) * 1000, 1),
                "max_ms": round(max(p, default=0) * 1000, 2),
                "over_10ms": sum(1 for x in p if x > 0.010),
            }
            for gen, p in gc_pauses.items()
        },
    }


def quiet_logs() -> None:
    import app.main
    import app.observability.logging as tollway_logging

    original = tollway_logging.configure_logging

    def configure_logging(level: str, **kwargs: Any) -> None:
        original(level, **kwargs)
        for name in ("httpx", "httpcore", "uvicorn.access"):
            logging.getLogger(name).setLevel(logging.WARNING)

    tollway_logging.configure_logging = configure_logging
    app.main.configure_logging = configure_logging


def tuned_gc() -> None:
    import app.main
    import app.pipeline

    del app  # imported for their side effect: everything the app needs is loaded before freezing

    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)


def no_env_proxy_lookup() -> None:
    """aiohttp sessions with ``trust_env=False``: no netrc read and no proxy scan of the environment
    in a thread per request (what resolving the proxy once per provider at start-up would save)."""
    import aiohttp

    original = aiohttp.ClientSession.__init__

    def init(self: aiohttp.ClientSession, *args: Any, **kwargs: Any) -> None:
        kwargs["trust_env"] = False
        original(self, *args, **kwargs)

    aiohttp.ClientSession.__init__ = init  # type: ignore[method-assign]


def memory_probe(path: str, every_s: float = 30.0) -> None:
    """tracemalloc from start-up; every ``every_s`` the allocation sites that grew most since the
    first snapshot are written to ``path`` (slow: for finding a leak, not for timing)."""
    import tracemalloc

    import app.main
    import app.services

    tracemalloc.start(8)
    tasks: list[asyncio.Task[None]] = []

    async def probe() -> None:
        await asyncio.sleep(every_s)
        first = tracemalloc.take_snapshot()
        while True:
            await asyncio.sleep(every_s)
            now = tracemalloc.take_snapshot()
            growth = now.compare_to(first, "traceback")[:12]
            report = [
                {
                    "size_diff_kb": round(stat.size_diff / 1024, 1),
                    "count_diff": stat.count_diff,
                    "traceback": [f"{f.filename}:{f.lineno}" for f in stat.traceback][-8:],
                }
                for stat in growth
            ]
            traced, _peak = tracemalloc.get_traced_memory()
            text = json.dumps({"traced_mb": round(traced / 2**20, 1), "growth": report}, indent=1)
            await asyncio.to_thread(Path(path).write_text, text)

    original = app.services.build_services

    async def build_services(*args: Any, **kwargs: Any) -> Any:
        services = await original(*args, **kwargs)
        tasks.append(asyncio.get_running_loop().create_task(probe()))
        return services

    app.services.build_services = build_services
    app.main.build_services = build_services


def stage_timer(path: str) -> None:
    """Wall time of each pipeline stage (authenticate, route, admit, upstream call, respond) and of
    the whole ``handle``, written to ``path`` as JSON percentiles once a second: where an unloaded
    request's added latency goes."""
    import app.pipeline
    from app.providers.dispatch import Dispatcher

    samples: dict[str, list[float]] = {}
    in_flight = [0]  # stages are recorded only for requests served alone (no queueing in them)

    def note(label: str, seconds: float) -> None:
        if in_flight[0] == 1:
            samples.setdefault(label, []).append(seconds)

    def timed(owner: Any, name: str, label: str) -> None:
        original = getattr(owner, name)
        if asyncio.iscoroutinefunction(original):

            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                started = time.perf_counter()
                try:
                    return await original(*args, **kwargs)
                finally:
                    note(label, time.perf_counter() - started)

            setattr(owner, name, async_wrapper)
        else:

            def wrapper(*args: Any, **kwargs: Any) -> Any:
                started = time.perf_counter()
                try:
                    return original(*args, **kwargs)
                finally:
                    note(label, time.perf_counter() - started)

            setattr(owner, name, wrapper)

    pipeline = app.pipeline.Pipeline
    timed(pipeline, "handle", "handle (to outcome)")
    timed(pipeline, "authenticate", "authenticate")
    timed(app.pipeline, "parse", "parse")
    timed(pipeline, "route", "route")
    timed(pipeline, "admit", "admit")
    timed(pipeline, "look_up_cache", "response cache")
    timed(pipeline, "prepare", "prepare for model")
    timed(Dispatcher, "complete", "upstream call (dispatch)")
    timed(pipeline, "respond", "respond (encode)")

    async def writer() -> None:
        while True:
            await asyncio.sleep(1.0)
            summary = {}
            for label, values in samples.items():
                ordered = sorted(values[-20000:])
                summary[label] = {
                    "n": len(values),
                    "p50_us": round(ordered[len(ordered) // 2] * 1e6, 1),
                    "p90_us": round(ordered[int(len(ordered) * 0.9)] * 1e6, 1),
                }
            await asyncio.to_thread(Path(path).write_text, json.dumps(summary, indent=1))

    original_handle = pipeline.handle
    state = {"started": False}

    async def handle(self: Any, *args: Any, **kwargs: Any) -> Any:
        if not state["started"]:
            state["started"] = True
            asyncio.get_running_loop().create_task(writer())
        in_flight[0] += 1
        try:
            return await original_handle(self, *args, **kwargs)
        finally:
            in_flight[0] -= 1

    pipeline.handle = handle  # type: ignore[method-assign]
