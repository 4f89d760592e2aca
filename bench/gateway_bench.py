"""The gateway benchmark: the simulator called directly vs through Tollway, interleaved in rounds.

For each configuration (``bench/stack.py``), client format (Anthropic, OpenAI), mode (JSON, stream of
50 tokens) and concurrency, every round runs the same requests first straight to the simulator, then
through the gateway, so slow phases of the machine hit both. Samples are pooled over the rounds;
*added* latency is the gateway's percentile minus the direct percentile (a difference of
percentiles, not a percentile of per-request differences: the two sides are different requests).

Beyond the closed-loop matrix it measures: 1,000-token streams at 100 tokens/s (per-event overhead);
concurrency 32 *below saturation* (Poisson arrivals at half the gateway's measured throughput, at
most 32 in flight); a py-spy profile; a soak with the gateway's RSS sampled; 1,000 concurrent slow
streams; and one worker vs two.

CPU per request is the gateway process tree's user + system time (psutil) over a round, after a short
settle so the work done after the response (ledger, budget settlement, log line) is included, minus
the tree's idle rate, divided by the requests in the round.
"""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psutil

from bench import stack, workload
from bench.loadgen import CellSpec, LoadgenProcess
from bench.procs import Child, ProcessGroup, busy_cpu_seconds, pin_self, usable_cores
from bench.stats import difference, linear_slope, summary_ms
from bench.workload import Format

MODES: tuple[str, ...] = ("json", "stream")
SETTLE_S = 0.3  # after a gateway round: the ledger flushes every 0.2 s
DEFAULT_MODELS = {"anthropic": "claude-sonnet-5-5", "openai": "gpt-5"}


@dataclass
class Plan:
    smoke: bool = False
    configs: list[str] = field(default_factory=lambda: ["everything-on", "bare"])
    formats: list[Format] = field(default_factory=lambda: ["anthropic", "openai"])
    concurrencies: list[int] = field(default_factory=lambda: [1, 8, 32, 128])
    rounds: int = 3
    counts: dict[int, int] = field(default_factory=lambda: {1: 300, 8: 1200, 32: 1500, 128: 2000})
    max_seconds: float = 6.0  # per side per round
    long_tokens: int = 1000
    long_rate: float = 100.0
    long_counts: dict[int, int] = field(default_factory=lambda: {1: 1, 32: 32})
    long_rounds: int = 2
    # Offered load as shares of the measured closed-loop throughput: half (the headline), a quarter.
    below_saturation_shares: tuple[float, ...] = (0.5, 0.25)
    below_saturation_count: int = 1000
    soak_s: float = 600.0
    soak_sample_s: float = 5.0
    slow_streams: int = 1000
    slow_tokens: int = 20
    slow_rate: float = 5.0
    scaling: bool = True
    scaling_concurrencies: list[int] = field(default_factory=lambda: [32, 128])
    scaling_rounds: int = 2
    profile: bool = True
    profile_s: float = 20.0
    warmup_requests: int = 300
    litellm: bool = False
    long_streams: bool = True
    below_saturation: bool = True
    gateway_prelude: str | None = None  # Python run in the gateway process before it starts (experiments)
    postgres_server: str = "postgresql://postgres@127.0.0.1:5432"
    redis_url: str = "redis://127.0.0.1:6379/13"

    @classmethod
    def smoke_plan(cls) -> Plan:
        return cls(
            smoke=True,
            concurrencies=[1, 32],
            rounds=1,
            counts={1: 40, 32: 300},
            max_seconds=4.0,
            long_tokens=100,
            long_rate=200.0,
            long_counts={1: 1, 32: 32},
            long_rounds=1,
            below_saturation_count=200,
            below_saturation_shares=(0.5,),
            soak_s=30.0,
            soak_sample_s=2.0,
            slow_streams=200,
            slow_tokens=10,
            slow_rate=10.0,
            scaling_concurrencies=[32],
            scaling_rounds=1,
            profile=False,
            warmup_requests=60,
        )


# ---- machine ------------------------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    model = platform.processor() or ""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    import uvicorn

    versions = {"python": platform.python_version(), "uvicorn": uvicorn.__version__}
    for name in ("uvloop", "httptools", "aiohttp", "httpx", "starlette", "fastapi", "redis", "asyncpg", "sqlalchemy"):
        with contextlib.suppress(Exception):
            versions[name] = __import__(name).__version__
    return {
        "cpu_model": model,
        "logical_cpus": psutil.cpu_count(),
        "usable_cores": usable_cores(),
        "ram_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "kernel": platform.release(),
        "versions": versions,
        "load_average_at_start": os.getloadavg(),
    }


def code_state() -> dict[str, Any]:
    """The commit and a hash of every file under app/: a run must not mix versions of the gateway."""
    import hashlib

    from bench.procs import ROOT

    digest = hashlib.sha256()
    for path in sorted((ROOT / "app").rglob("*")):
        if path.is_file() and path.suffix in (".py", ".yaml", ".sql"):
            digest.update(str(path.relative_to(ROOT)).encode())
            digest.update(path.read_bytes())
    state: dict[str, Any] = {"app_sha256": digest.hexdigest()[:16]}
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        git = ["git", "-C", str(ROOT)]
        state["commit"] = subprocess.run(
            [*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            [*git, "status", "--porcelain", "--", "app"], capture_output=True, text=True, timeout=10
        ).stdout.split("\n")
        state["uncommitted_app_files"] = [line[3:] for line in dirty if line.strip()]
    return state


def pinning_plan() -> dict[str, list[int] | None]:
    cores = usable_cores()
    if len(cores) < 2:
        return {"gateway": None, "client": None}
    return {"gateway": [cores[0]], "client": [cores[1]]}


# ---- measuring one side of a round ------------------------------------------------------------------


def _backing_processes() -> list[psutil.Process]:
    return [p for p in psutil.process_iter(["name"]) if p.info["name"] in ("redis-server", "postgres")]


def _cpu_of(procs: list[psutil.Process]) -> float:
    total = 0.0
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            t = proc.cpu_times()
            total += t.user + t.system
    return total


@dataclass
class Bench:
    plan: Plan
    group: ProcessGroup
    loadgen: LoadgenProcess
    simulator: Child
    sim_port: int
    pins: dict[str, list[int] | None]
    log: Callable[[str], None]
    idle_cpu_rate: float = 0.0  # gateway tree CPU seconds per second at rest
    code_check: Callable[[str], None] | None = None

    def side(self, spec: CellSpec, gateway: stack.Gateway | None) -> dict[str, Any]:
        """Run one side of a round; return the loadgen's samples plus server-side accounting."""
        gw_cpu0 = gateway.child.cpu_seconds() if gateway else 0.0
        sim_cpu0 = self.simulator.cpu_seconds()
        backing = _backing_processes() if gateway else []
        backing0 = _cpu_of(backing)
        busy0 = busy_cpu_seconds()
        t0 = time.perf_counter()
        result = self.loadgen.run(spec)
        if gateway:
            time.sleep(SETTLE_S)
        elapsed = time.perf_counter() - t0
        result["sim_cpu_s"] = self.simulator.cpu_seconds() - sim_cpu0
        result["busy_cpu_s"] = busy_cpu_seconds() - busy0
        result["elapsed_s"] = elapsed
        if gateway:
            raw = gateway.child.cpu_seconds() - gw_cpu0
            result["gateway_cpu_s"] = max(0.0, raw - self.idle_cpu_rate * elapsed)
            result["backing_cpu_s"] = _cpu_of(backing) - backing0
            result["gateway_rss"] = gateway.child.rss_bytes()
            result["gateway_peak_rss"] = gateway.child.peak_rss_bytes()
        return result

    def measure_idle(self, gateway: stack.Gateway, seconds: float = 2.0) -> float:
        c0 = gateway.child.cpu_seconds()
        time.sleep(seconds)
        self.idle_cpu_rate = (gateway.child.cpu_seconds() - c0) / seconds
        return self.idle_cpu_rate


def _pool(results: list[dict[str, Any]], key: str) -> list[float]:
    out: list[float] = []
    for r in results:
        out.extend(r[key])
    return out


def _side_summary(results: list[dict[str, Any]], streaming: bool) -> dict[str, Any]:
    requests = sum(r["requests"] for r in results)
    wall = sum(r["wall_s"] for r in results)
    per = (lambda s: round(s * 1000 / requests, 4)) if requests else (lambda s: None)
    out: dict[str, Any] = {
        "requests": requests,
        "errors": sum(r["errors"] for r in results),
        "error_samples": [e for r in results for e in r["error_samples"]][:3],
        "rps": round(requests / wall, 1) if wall else None,
        "rps_per_round": [round(r["requests"] / r["wall_s"], 1) for r in results if r["wall_s"]],
        "latency_ms": summary_ms(_pool(results, "latency")),
        "client_cpu_ms_per_req": per(sum(r["client_cpu_s"] for r in results)),
        "client_cpu_util": round(sum(r["client_cpu_s"] for r in results) / wall, 3) if wall else None,
        "sim_cpu_ms_per_req": per(sum(r["sim_cpu_s"] for r in results)),
        "machine_busy_util": round(sum(r["busy_cpu_s"] for r in results) / sum(r["elapsed_s"] for r in results), 3),
    }
    core1 = sum(r["client_cpu_s"] + r["sim_cpu_s"] for r in results)
    out["client_core_util"] = round(core1 / wall, 3) if wall else None
    # Cores busy with anything else (Redis, PostgreSQL, other jobs), over the same window as the
    # machine-wide figure: the round plus its settle time.
    elapsed = sum(r["elapsed_s"] for r in results)
    ours = core1 + sum(r.get("gateway_cpu_s", 0.0) for r in results)
    out["other_util"] = round(max(0.0, sum(r["busy_cpu_s"] for r in results) - ours) / elapsed, 3)
    if streaming:
        out["ttft_ms"] = summary_ms(_pool(results, "ttft"))
        gaps = _pool(results, "gaps")
        out["gap_ms"] = summary_ms(gaps)
        out["events_per_req"] = round(sum(r["events"] for r in results) / requests, 1) if requests else None
    if "gateway_cpu_s" in results[0]:
        cpu = sum(r["gateway_cpu_s"] for r in results)
        out["gateway_cpu_ms_per_req"] = per(cpu)
        out["gateway_cpu_util"] = round(cpu / wall, 3) if wall else None
        out["backing_cpu_ms_per_req"] = per(sum(r["backing_cpu_s"] for r in results))
        out["gateway_rss_mb"] = round(max(r["gateway_rss"] for r in results) / 2**20, 1)
        out["gateway_peak_rss_mb"] = round(max(r["gateway_peak_rss"] for r in results) / 2**20, 1)
    return out


def _added(gw: dict[str, Any], direct: dict[str, Any]) -> dict[str, Any]:
    added = {"latency_ms": difference(gw["latency_ms"], direct["latency_ms"])}
    if "ttft_ms" in gw:
        added["ttft_ms"] = difference(gw["ttft_ms"], direct["ttft_ms"])
        added["gap_ms"] = difference(gw["gap_ms"], direct["gap_ms"])
    return added


# ---- the cells --------------------------------------------------------------------------------------


@dataclass
class Scenario:
    fmt: Format
    stream: bool
    output_tokens: int = workload.OUTPUT_TOKENS
    extra_headers: dict[str, str] = field(default_factory=dict)


def _spec(
    port: int,
    api_key: str,
    model: str,
    sc: Scenario,
    *,
    concurrency: int,
    count: int,
    max_seconds: float,
    warmup: int,
    rate: float | None = None,
    keep_gaps: bool = True,
    stagger_s: float = 0.0,
) -> CellSpec:
    return CellSpec(
        host="127.0.0.1",
        port=port,
        path=workload.path(sc.fmt),
        headers=workload.headers(sc.fmt, api_key, output_tokens=sc.output_tokens, extra=sc.extra_headers),
        body=workload.encoded(sc.fmt, model, sc.stream),
        stream=sc.stream,
        concurrency=concurrency,
        count=count,
        max_seconds=max_seconds,
        warmup=warmup,
        rate=rate,
        keep_gaps=keep_gaps,
        stagger_s=stagger_s,
    )


def run_pair(
    bench: Bench,
    gateway: stack.Gateway,
    models: dict[str, dict[str, str]],
    sc: Scenario,
    *,
    concurrency: int,
    count: int,
    rounds: int,
    max_seconds: float,
    rate: float | None = None,
    direct: bool = True,
    stagger_s: float = 0.0,
) -> dict[str, Any]:
    """Rounds of direct-then-gateway for one cell; pooled summaries and the added latency."""
    warmup = 0 if count <= concurrency else min(2 * concurrency, 100)
    direct_results: list[dict[str, Any]] = []
    gateway_results: list[dict[str, Any]] = []
    gw_model = models["gateway"][sc.fmt]
    sim_model = models["direct"][sc.fmt]
    for _ in range(rounds):
        if direct:
            spec = _spec(
                bench.sim_port,
                "bench-direct",
                sim_model,
                sc,
                concurrency=concurrency,
                count=count,
                max_seconds=max_seconds,
                warmup=warmup,
                rate=rate,
                stagger_s=stagger_s,
            )
            direct_results.append(bench.side(spec, None))
        spec = _spec(
            gateway.port,
            gateway.api_key,
            gw_model,
            sc,
            concurrency=concurrency,
            count=count,
            max_seconds=max_seconds,
            warmup=warmup,
            rate=rate,
            stagger_s=stagger_s,
        )
        gateway_results.append(bench.side(spec, gateway))
    cell: dict[str, Any] = {
        "config": gateway.config,
        "workers": gateway.workers,
        "format": sc.fmt,
        "mode": "stream" if sc.stream else "json",
        "output_tokens": sc.output_tokens,
        "concurrency": concurrency,
        "rate": rate,
        "rounds": rounds,
        "model_requested": gw_model,
        "model_direct": sim_model,
        "gateway": _side_summary(gateway_results, sc.stream),
    }
    if direct:
        cell["direct"] = _side_summary(direct_results, sc.stream)
        cell["added"] = _added(cell["gateway"], cell["direct"])
    return cell


def _describe(cell: dict[str, Any]) -> str:
    gw = cell["gateway"]
    text = (
        f"{cell['config']:>13} {cell['workers']}w {cell['format']:9} {cell['mode']:6} "
        f"tok={cell['output_tokens']:<4} c={cell['concurrency']:<4}"
        f"{' rate=' + str(round(cell['rate'])) if cell['rate'] else ''} "
        f"gw {gw['rps']:>7} rps p50 {gw['latency_ms'].get('p50', float('nan')):8.2f} ms "
        f"cpu {gw['gateway_cpu_ms_per_req']} ms/req"
    )
    if "direct" in cell:
        d = cell["direct"]
        a = cell["added"]["latency_ms"]
        text += (
            f" | direct {d['rps']:>7} rps p50 {d['latency_ms'].get('p50', float('nan')):7.2f} ms"
            f" | added p50 {a.get('p50', float('nan')):+.2f} p99 {a.get('p99', float('nan')):+.2f} ms"
        )
        if "ttft_ms" in cell["added"]:
            text += f" ttft {cell['added']['ttft_ms'].get('p50', float('nan')):+.2f}"
    errors = gw["errors"] + cell.get("direct", {}).get("errors", 0)
    if errors:
        text += f" ERRORS={errors} {gw['error_samples'] or cell.get('direct', {}).get('error_samples')}"
    return text


# ---- phases -------------------------------------------------------------------------------------------


def resolve_models(gateway: stack.Gateway, requested: str | None) -> dict[str, str]:
    """Which model the gateway serves each format's request with (what ``auto`` picked)."""
    served: dict[str, str] = {}
    for fmt in ("anthropic", "openai"):
        model = requested or DEFAULT_MODELS[fmt]
        response = httpx.post(
            f"http://127.0.0.1:{gateway.port}{workload.path(fmt)}",
            content=workload.encoded(fmt, model, False),
            headers={**workload.headers(fmt, gateway.api_key), "content-type": "application/json"},
            timeout=30,
        )
        if response.status_code != 200:
            raise RuntimeError(f"probe through the gateway failed: {response.status_code} {response.text[:300]}")
        served[fmt] = response.headers.get("x-tollway-served-model", model)
    return served


def warm_up(bench: Bench, gateway: stack.Gateway, models: dict[str, dict[str, str]]) -> None:
    n = bench.plan.warmup_requests
    for fmt in bench.plan.formats:
        for stream in (False, True):
            sc = Scenario(fmt, stream)
            for port, key, model in (
                (gateway.port, gateway.api_key, models["gateway"][fmt]),
                (bench.sim_port, "bench-direct", models["direct"][fmt]),
            ):
                bench.loadgen.run(_spec(port, key, model, sc, concurrency=8, count=n, max_seconds=20, warmup=0))


def matrix(bench: Bench, gateway: stack.Gateway, models: dict[str, dict[str, str]]) -> list[dict[str, Any]]:
    plan = bench.plan
    cells = []
    for fmt in plan.formats:
        for stream in (False, True):
            for c in plan.concurrencies:
                cell = run_pair(
                    bench,
                    gateway,
                    models,
                    Scenario(fmt, stream),
                    concurrency=c,
                    count=plan.counts[c],
                    rounds=plan.rounds,
                    max_seconds=plan.max_seconds,
                )
                cell["kind"] = "closed-loop"
                bench.log(_describe(cell))
                cells.append(cell)
    return cells


def long_streams(bench: Bench, gateway: stack.Gateway, models: dict[str, dict[str, str]]) -> list[dict[str, Any]]:
    plan = bench.plan
    cells = []
    seconds = plan.long_tokens / plan.long_rate
    for fmt in plan.formats:
        sc = Scenario(fmt, True, plan.long_tokens, {"x-sim-tokens-per-second": str(plan.long_rate)})
        for c, count in plan.long_counts.items():
            cell = run_pair(
                bench,
                gateway,
                models,
                sc,
                concurrency=c,
                count=count,
                rounds=plan.long_rounds,
                max_seconds=seconds * 3 + 10,
                stagger_s=1.0 if c > 1 else 0.0,
            )
            cell["kind"] = "long-stream"
            cell["tokens_per_second"] = plan.long_rate
            events = cell["gateway"].get("events_per_req") or 0
            cpu = cell["gateway"]["gateway_cpu_ms_per_req"]
            cell["gateway"]["gateway_cpu_us_per_event"] = round(cpu * 1000 / events, 2) if events and cpu else None
            bench.log(
                _describe(cell)
                + f" gap+ p50 {cell['added']['gap_ms'].get('p50')} p99 {cell['added']['gap_ms'].get('p99')}"
            )
            cells.append(cell)
    return cells


def below_saturation(
    bench: Bench,
    gateway: stack.Gateway,
    models: dict[str, dict[str, str]],
    saturation: dict[tuple[str, str], float],
) -> list[dict[str, Any]]:
    plan = bench.plan
    cells = []
    for share in plan.below_saturation_shares:
        for fmt in plan.formats:
            for stream in (False, True):
                mode = "stream" if stream else "json"
                rps = saturation.get((fmt, mode))
                if not rps:
                    continue
                rate = round(rps * share, 1)
                count = plan.below_saturation_count
                cell = run_pair(
                    bench,
                    gateway,
                    models,
                    Scenario(fmt, stream),
                    concurrency=32,
                    count=count,
                    rounds=plan.rounds,
                    max_seconds=count / rate + 10,
                    rate=rate,
                )
                cell["kind"] = "below-saturation"
                cell["load_share"] = share
                bench.log(_describe(cell))
                cells.append(cell)
    return cells


def soak(bench: Bench, gateway: stack.Gateway, models: dict[str, dict[str, str]]) -> dict[str, Any]:
    plan = bench.plan
    specs = []
    for fmt in plan.formats:
        for stream in (False, True):
            specs.append(
                _spec(
                    gateway.port,
                    gateway.api_key,
                    models["gateway"][fmt],
                    Scenario(fmt, stream),
                    concurrency=4,
                    count=10**9,
                    max_seconds=plan.soak_s,
                    warmup=0,
                    keep_gaps=False,
                )
            )
    cpu0 = gateway.child.cpu_seconds()
    t0 = time.perf_counter()
    samples: list[tuple[float, float]] = [(0.0, round(gateway.child.rss_bytes() / 2**20, 2))]
    bench.loadgen.start(specs)
    while not bench.loadgen.poll(plan.soak_sample_s):
        samples.append((round(time.perf_counter() - t0, 2), round(gateway.child.rss_bytes() / 2**20, 2)))
    results = bench.loadgen.wait()
    assert isinstance(results, list)
    wall = time.perf_counter() - t0
    samples.append((round(wall, 2), round(gateway.child.rss_bytes() / 2**20, 2)))
    requests = sum(r["requests"] for r in results)
    errors = sum(r["errors"] for r in results)
    # The first 10 % is warm-up (allocator arenas, caches filling); the trend is over the rest.
    steady = [s for s in samples if s[0] >= wall * 0.1] or samples
    k = max(1, min(3, len(steady) // 4))
    first = sum(s[1] for s in steady[:k]) / k
    last = sum(s[1] for s in steady[-k:]) / k
    slope = linear_slope([s[0] / 60 for s in steady], [s[1] for s in steady])
    out = {
        "seconds": round(wall, 1),
        "concurrency": 4 * len(specs),
        "mix": "both formats × JSON and 50-token streams, 4 users each, closed loop",
        "requests": requests,
        "errors": errors,
        "error_samples": [e for r in results for e in r["error_samples"]][:3],
        "rps": round(requests / wall, 1),
        "gateway_cpu_ms_per_req": round((gateway.child.cpu_seconds() - cpu0) * 1000 / max(requests, 1), 4),
        "rss_mb_samples": samples,
        "rss_mb_start": samples[0][1],
        "rss_mb_steady_first": round(first, 2),
        "rss_mb_steady_last": round(last, 2),
        "rss_mb_max": max(s[1] for s in samples),
        "rss_slope_mb_per_min": round(slope, 3),
        "latency_ms": summary_ms(_pool(results, "latency")),
    }
    bench.log(
        f"soak {out['seconds']} s: {requests} requests ({out['rps']} rps, {errors} errors), RSS "
        f"{out['rss_mb_start']} → steady {out['rss_mb_steady_first']} … {out['rss_mb_steady_last']} MB, "
        f"slope {out['rss_slope_mb_per_min']} MB/min"
    )
    return out


def slow_streams(bench: Bench, gateway: stack.Gateway, models: dict[str, dict[str, str]]) -> dict[str, Any]:
    plan = bench.plan
    n = plan.slow_streams
    fmt: Format = plan.formats[0]
    sc = Scenario(fmt, True, plan.slow_tokens, {"x-sim-tokens-per-second": str(plan.slow_rate)})
    spec = _spec(
        gateway.port,
        gateway.api_key,
        models["gateway"][fmt],
        sc,
        concurrency=n,
        count=n,
        max_seconds=120,
        warmup=0,
        keep_gaps=False,
    )
    ideal_s = plan.slow_tokens / plan.slow_rate
    rss0 = gateway.child.rss_bytes()
    sim0 = self_stats(bench.sim_port)
    t0 = time.perf_counter()
    samples = [(0.0, round(rss0 / 2**20, 2))]
    bench.loadgen.start(spec)
    while not bench.loadgen.poll(0.5):
        samples.append((round(time.perf_counter() - t0, 2), round(gateway.child.rss_bytes() / 2**20, 2)))
    result = bench.loadgen.wait()
    assert isinstance(result, dict)
    time.sleep(1.0)
    sim1 = self_stats(bench.sim_port)
    out = {
        "streams": n,
        "format": fmt,
        "tokens": plan.slow_tokens,
        "tokens_per_second": plan.slow_rate,
        "ideal_duration_s": ideal_s,
        "completed": result["requests"],
        "errors": result["errors"],
        "error_samples": result["error_samples"][:3],
        "wall_s": round(result["wall_s"], 2),
        "latency_ms": summary_ms(result["latency"]),
        "ttft_ms": summary_ms(result["ttft"]),
        "rss_mb_before": round(rss0 / 2**20, 1),
        "rss_mb_peak_sampled": max(s[1] for s in samples),
        "rss_mb_after": round(gateway.child.rss_bytes() / 2**20, 1),
        "vm_hwm_mb": round(gateway.child.peak_rss_bytes() / 2**20, 1),
        "rss_mb_samples": samples,
        "upstream_streams_completed": (sim1.get("streams_completed", 0) - sim0.get("streams_completed", 0)),
    }
    out["kb_per_stream"] = round((out["rss_mb_peak_sampled"] - out["rss_mb_before"]) * 1024 / n, 1)
    bench.log(
        f"slow streams: {out['completed']}/{n} completed, {out['errors']} errors, latency p50 "
        f"{out['latency_ms'].get('p50')} p99 {out['latency_ms'].get('p99')} ms (ideal {ideal_s * 1000:.0f}), "
        f"RSS {out['rss_mb_before']} → peak {out['rss_mb_peak_sampled']} → {out['rss_mb_after']} MB"
    )
    return out


def self_stats(sim_port: int) -> dict[str, int]:
    with contextlib.suppress(httpx.HTTPError, ValueError):
        data: dict[str, int] = httpx.get(f"http://127.0.0.1:{sim_port}/_sim/stats", timeout=5).json()
        return data
    return {}


def profile(
    bench: Bench, gateway: stack.Gateway, models: dict[str, dict[str, str]], out_dir: Path
) -> list[dict[str, Any]]:
    """py-spy the gateway under the everything-on JSON and stream loads (concurrency 32)."""
    from bench import profile_summary

    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(py_spy).exists():
        bench.log("py-spy is not installed: no profile (pip install py-spy)")
        return []
    profiles = []
    for fmt, stream in (("anthropic", False), ("anthropic", True), ("openai", False), ("openai", True)):
        mode = "stream" if stream else "json"
        sc = Scenario(fmt, stream)  # type: ignore[arg-type]
        spec = _spec(
            gateway.port,
            gateway.api_key,
            models["gateway"][fmt],
            sc,
            concurrency=32,
            count=10**9,
            max_seconds=bench.plan.profile_s + 3,
            warmup=0,
            keep_gaps=False,
        )
        raw = out_dir / f"profile-{gateway.config}-{fmt}-{mode}.txt"
        bench.loadgen.start(spec)
        time.sleep(1.0)
        cmd = [
            py_spy,
            "record",
            "--pid",
            str(gateway.child.pid),
            "--duration",
            str(int(bench.plan.profile_s)),
            "--rate",
            "250",
            "--format",
            "raw",
            "--nonblocking",
            "--threads",
            "--subprocesses",
            "-o",
            str(raw),
        ]
        with contextlib.suppress(subprocess.TimeoutExpired):
            subprocess.run(
                cmd,
                capture_output=True,
                timeout=bench.plan.profile_s + 30,
                preexec_fn=(lambda: pin_self(bench.pins["client"])),
            )
        bench.loadgen.wait()
        if raw.exists():
            summary = profile_summary.summarise(raw.read_text())
            summary.update({"format": fmt, "mode": mode, "file": raw.name})
            profiles.append(summary)
            bench.log(
                f"profile {fmt} {mode}: {summary['samples']} samples; top: "
                + ", ".join(f"{g} {p}%" for g, p in list(summary["by_area"].items())[:6])
            )
    return profiles


def scaling(bench: Bench, setup: stack.GatewaySetup, models: dict[str, dict[str, str]]) -> dict[str, Any]:
    """One worker vs two, every process free to run on every core (the fair setting for two workers)."""
    plan = bench.plan
    every = usable_cores()
    for pid in (bench.simulator.pid, bench.loadgen.pid, os.getpid()):
        with contextlib.suppress(OSError):
            os.sched_setaffinity(pid, set(every))
    runs: dict[int, list[dict[str, Any]]] = {}
    try:
        for workers in (1, 2):
            results_code = bench.code_check
            if results_code is not None:
                results_code(f"scaling-{workers}w")
            gateway = stack.start_gateway(bench.group, setup, workers, None, prelude=plan.gateway_prelude)
            try:
                warm_up(bench, gateway, models)
                bench.measure_idle(gateway, 1.0)
                cells = []
                for fmt in plan.formats:
                    for stream in (False, True):
                        for c in plan.scaling_concurrencies:
                            cell = run_pair(
                                bench,
                                gateway,
                                models,
                                Scenario(fmt, stream),
                                concurrency=c,
                                count=plan.counts[c],
                                rounds=plan.scaling_rounds,
                                max_seconds=plan.max_seconds,
                                direct=False,
                            )
                            cell["kind"] = "scaling"
                            bench.log(_describe(cell))
                            cells.append(cell)
                runs[workers] = cells
            finally:
                stack.stop_gateway(bench.group, gateway)
    finally:
        client = bench.pins["client"]
        if client:
            for pid in (bench.simulator.pid, bench.loadgen.pid, os.getpid()):
                with contextlib.suppress(OSError):
                    os.sched_setaffinity(pid, set(client))
    rows = []
    for one, two in zip(runs.get(1, []), runs.get(2, []), strict=False):
        g1, g2 = one["gateway"], two["gateway"]
        per_core_1 = g1["rps"] / g1["gateway_cpu_util"] if g1["gateway_cpu_util"] else None
        per_core_2 = g2["rps"] / g2["gateway_cpu_util"] if g2["gateway_cpu_util"] else None
        rows.append(
            {
                "format": one["format"],
                "mode": one["mode"],
                "concurrency": one["concurrency"],
                "rps_1w": g1["rps"],
                "rps_2w": g2["rps"],
                "ratio": round(g2["rps"] / g1["rps"], 3) if g1["rps"] else None,
                "gateway_cores_used_1w": g1["gateway_cpu_util"],
                "gateway_cores_used_2w": g2["gateway_cpu_util"],
                "cpu_ms_per_req_1w": g1["gateway_cpu_ms_per_req"],
                "cpu_ms_per_req_2w": g2["gateway_cpu_ms_per_req"],
                "rps_per_gateway_core_1w": round(per_core_1, 1) if per_core_1 else None,
                "rps_per_gateway_core_2w": round(per_core_2, 1) if per_core_2 else None,
                # Two workers with a core each, if the CPU cost per request stays what it is with two.
                "projected_ratio_dedicated_cores": round(2 * per_core_2 / per_core_1, 3)
                if per_core_1 and per_core_2
                else None,
                "client_core_util_2w": g2["client_core_util"],
                "machine_busy_util_2w": g2["machine_busy_util"],
            }
        )
    for row in rows:
        bench.log(
            f"scaling {row['format']} {row['mode']} c={row['concurrency']}: "
            f"{row['rps_1w']} → {row['rps_2w']} rps "
            f"(×{row['ratio']}), projected on dedicated cores ×{row['projected_ratio_dedicated_cores']}"
        )
    return {
        "pinning": "none: gateway workers, simulator and load generator all free on every core",
        "rows": rows,
        "cells": runs,
    }


# ---- the whole run ------------------------------------------------------------------------------------


def run(plan: Plan, out_dir: Path, log: Callable[[str], None] = print) -> dict[str, Any]:
    started = datetime.now(UTC)
    pins = pinning_plan()
    pin_self(pins["client"])
    results: dict[str, Any] = {
        "started": started.isoformat(timespec="seconds"),
        "command": " ".join(["python -m bench.run", *sys.argv[1:]]),
        "plan": asdict(plan),
        "machine": machine_info(),
        "pinning": {
            "gateway": pins["gateway"],
            "simulator_and_loadgen": pins["client"],
            "note": (
                "gateway (one worker) on its own core; simulator, load generator, py-spy and this "
                "orchestrator share the other; Redis and PostgreSQL are shared system services, unpinned"
                if pins["gateway"]
                else "fewer than 2 usable cores: nothing pinned"
            ),
        },
        "method": {
            "added_latency": "gateway percentile − direct percentile over samples pooled from all rounds",
            "cpu_per_request": "gateway process tree user+system CPU (psutil) over a round incl. a "
            f"{SETTLE_S} s settle, minus the idle rate, / requests in the round",
            "ttft": "request written → first content event read (Anthropic content_block_delta, "
            "OpenAI chunk with non-empty delta.content)",
            "gap": "time between consecutive SSE events as read by the client",
        },
        "cells": [],
        "profiles": [],
        "code": {"at_start": code_state(), "at_gateway_start": {}},
    }

    def check_code(label: str) -> None:
        """Record the app's version at each gateway start; flag a run whose code changed under it."""
        now = code_state()
        results["code"]["at_gateway_start"][label] = now["app_sha256"]
        if now["app_sha256"] != results["code"]["at_start"]["app_sha256"]:
            results["code"]["changed_during_run"] = True
            log(f"WARNING: app/ changed since the run started (now {now}): results mix gateway versions")

    log(f"pinning: {results['pinning']}")
    log(f"code: {results['code']['at_start']}")
    work_dir = Path(tempfile.mkdtemp(prefix="tollway-bench-"))
    postgres = stack.Postgres(plan.postgres_server)
    pg_created = False
    team_ids: list[str] = []
    loadgen: LoadgenProcess | None = None
    completed = False
    try:
        with ProcessGroup(work_dir) as group:
            simulator, sim_port = stack.start_simulator(group, pins["client"])
            loadgen = LoadgenProcess(pins["client"])
            bench = Bench(plan, group, loadgen, simulator, sim_port, pins, log, code_check=check_code)
            models: dict[str, dict[str, str]] = {"gateway": {}, "direct": {}}
            saturation: dict[tuple[str, str], float] = {}
            for config in plan.configs:
                if config == "everything-on":
                    pg_created = True  # (dropped with IF EXISTS, even when creating it failed half-way)
                    setup = stack.prepare_everything_on(sim_port, postgres, plan.redis_url, work_dir)
                else:
                    setup = stack.prepare_bare(sim_port, work_dir)
                log(f"== {config}, 1 worker")
                check_code(f"{config}-1w")
                gateway = stack.start_gateway(group, setup, 1, pins["gateway"], prelude=plan.gateway_prelude)
                team_ids.append(gateway.team_id)
                if config == "everything-on":
                    served = resolve_models(gateway, "auto")
                    models = {"gateway": {f: "auto" for f in served}, "direct": served}
                else:
                    concrete = models["direct"] or {f: DEFAULT_MODELS[f] for f in ("anthropic", "openai")}
                    served = resolve_models(gateway, None) if not models["direct"] else concrete
                    models = {"gateway": dict(concrete), "direct": dict(concrete)}
                log(f"models: {models}")
                results.setdefault("models", {})[config] = models
                warm_up(bench, gateway, models)
                results.setdefault("idle_cpu_rate", {})[config] = round(bench.measure_idle(gateway), 5)
                cells = matrix(bench, gateway, models)
                if config == "everything-on" or not saturation:
                    for cell in cells:
                        if cell["concurrency"] == 32:
                            saturation[(cell["format"], cell["mode"])] = cell["gateway"]["rps"]
                if plan.long_streams:
                    cells += long_streams(bench, gateway, models)
                if plan.below_saturation:
                    cells += below_saturation(bench, gateway, models, saturation)
                results["cells"] += cells
                results.setdefault("peak_rss_mb", {})[config] = round(gateway.child.peak_rss_bytes() / 2**20, 1)
                # The profile, soak and slow streams run on everything-on (or the only config given).
                if config == ("everything-on" if "everything-on" in plan.configs else plan.configs[0]):
                    if plan.profile:
                        results["profiles"] = profile(bench, gateway, models, out_dir)
                    if plan.soak_s > 0:
                        results["soak"] = soak(bench, gateway, models)
                    if plan.slow_streams > 0:
                        results["slow_streams"] = slow_streams(bench, gateway, models)
                stack.stop_gateway(group, gateway)
                if config == "everything-on" and plan.scaling:
                    log("== everything-on, 1 vs 2 workers (unpinned)")
                    results["scaling"] = scaling(bench, setup, models)
            if plan.litellm:
                from bench import litellm_bench

                results["litellm"] = litellm_bench.run(bench, models, work_dir)
            loadgen.close()
            loadgen = None
        completed = True
    finally:
        if loadgen is not None:
            loadgen.close()
        if pg_created:
            with contextlib.suppress(Exception):
                postgres.drop()
        with contextlib.suppress(Exception):
            stack.redis_cleanup(plan.redis_url, [t for t in team_ids if t])
        if completed:
            shutil.rmtree(work_dir, ignore_errors=True)
        else:
            log(f"logs of the processes kept in {work_dir}")
    results["finished"] = datetime.now(UTC).isoformat(timespec="seconds")
    results["machine"]["load_average_at_end"] = os.getloadavg()
    return results
