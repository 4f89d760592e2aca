"""The fault matrix (issue 16): a real gateway under a burst of mixed requests while one fault hits it.

``python -m bench.fault_matrix`` (about 4 minutes; loopback only) starts a private ``redis-server``
(its own port and temp directory, append-only file fsync'd per write, so a killed one restarts with
its data), a throwaway PostgreSQL database on 127.0.0.1:5432 reached through a TCP proxy this process
can cut, the provider simulator, and for each fault a fresh ``tollway serve`` process (one worker,
metrics on, the loop-lag probe on, strict budgets failing closed). Each fault gets a new team with a
``tokens_per_day`` budget the burst runs into, and a burst of requests at a fixed rate — Anthropic and
OpenAI format, JSON and streams, in turn — with the fault applied from ``FAULT_AT_S`` to
``RECOVER_AT_S``. After the burst everything is restored, the gateway is given time to drain its
spool and settle, and is stopped with SIGTERM. Then, per fault:

* **requests** sent, and how they ended (status codes, connection errors, streams cut);
* **rows written**: ledger rows of the fault's team;
* **rows lost**: requests the gateway answered with a request id that have no ledger row;
* **orphaned reservations**: live reservation records and in-flight amounts left in Redis;
* **overspend**: tokens the ledger billed (and Redis counted) above the team's limit;
* **max event-loop stall**: ``tollway_event_loop_lag_max_seconds`` (scraped every 0.5 s);
* **peak RSS** of the gateway process (VmHWM; the larger of the two processes where it restarts).

Results: ``bench/results/fault-matrix.json``; the table and the documented bounds: docs/fault-matrix.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import platform
import signal
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psutil

from bench.hostile_provider import HOSTILE_HEADER, HostileProvider
from tests.integration.test_budget_support import RedisServer
from tests.procs import BackgroundProxy, Gateway, Stack, fresh_database

RESULTS = Path(__file__).resolve().parent / "results" / "fault-matrix.json"
POSTGRES = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
BURST_S = 14.0
FAULT_AT_S = 2.0
RECOVER_AT_S = 5.0
RATE = 40.0  # requests per second, open loop
MAX_IN_FLIGHT = 200
OUTPUT_TOKENS = 24
# A request's worst case in tokens: its output cap plus a generous bound on its short prompt.
REQUEST_TOKENS_BOUND_PROMPT = 64
MAX_TOKENS = 64
REQUEST_TOKENS_BOUND = MAX_TOKENS + REQUEST_TOKENS_BOUND_PROMPT
TOKENS_PER_DAY = 21_000  # the team budget: a fault-free burst runs into it near its end
KINDS = ("anthropic-json", "anthropic-stream", "openai-json", "openai-stream")
MALFORMED = ("json", "types", "huge")
HOSTILE = ("huge-headers", "gzip-bomb", "silent")
REQUEST_DEADLINE_S = 8.0  # bounds the "never answers" provider
SETTLE_TIMEOUT_S = 30.0
COOLDOWN_S = 1.0
PROVIDER_FAULTS = ("provider-malformed-replies", "hostile-provider")
WARMUP_REQUESTS = 8  # each kind twice, on another team, before the burst: first-call costs are not the fault's


# ---- one request -----------------------------------------------------------------------------------


@dataclass
class Outcome:
    kind: str
    status: int = 0  # 0: no HTTP answer (connection refused or reset before the head)
    request_id: str = ""
    complete: bool = False  # a JSON body, or a stream with its terminal event
    error_event: bool = False  # a stream that carries the wire's in-stream error event
    error: str = ""
    error_type: str = ""  # of a non-2xx answer, from its body
    started_s: float = 0.0
    ended: float = 0.0  # time.monotonic() when the client saw the end


def request_body(kind: str, n: int) -> tuple[str, dict[str, Any]]:
    prompt = f"fault matrix request {n}: say something short"
    stream = kind.endswith("stream")
    if kind.startswith("anthropic"):
        body: dict[str, Any] = {
            "model": "claude-haiku-5-5",
            "max_tokens": MAX_TOKENS,
            "messages": [{"role": "user", "content": prompt}],
            "stream": stream,
        }
        return "/v1/messages", body
    body = {
        "model": "gpt-5-mini",
        "max_completion_tokens": MAX_TOKENS,
        "messages": [{"role": "user", "content": prompt}],
        "stream": stream,
    }
    if stream:
        body["stream_options"] = {"include_usage": True}
    return "/v1/chat/completions", body


async def send(
    client: httpx.AsyncClient, base_url: str, key: str, kind: str, n: int, headers: dict[str, str]
) -> Outcome:
    path, body = request_body(kind, n)
    auth = (
        {"x-api-key": key, "anthropic-version": "2023-06-01"}
        if kind.startswith("anthropic")
        else {"authorization": f"Bearer {key}"}
    )
    outcome = Outcome(kind)
    try:
        async with client.stream("POST", base_url + path, json=body, headers={**auth, **headers}) as response:
            outcome.status = response.status_code
            outcome.request_id = response.headers.get("request-id", "")
            data = b""
            async for chunk in response.aiter_bytes():
                data += chunk
        if not body["stream"] or response.status_code != 200:
            decoded = json.loads(data)
            outcome.complete = True
            if response.status_code >= 400:
                error = decoded.get("error") or {}
                outcome.error_type = str(error.get("code") or error.get("type") or "")
        else:
            outcome.complete = b"message_stop" in data or b"data: [DONE]" in data
            # A stream that failed after its 200 must end with the wire's error event, not just stop.
            outcome.error_event = b"event: error" in data or b'data: {"error"' in data
    except (httpx.HTTPError, ValueError) as exc:
        outcome.error = type(exc).__name__
    return outcome


# ---- the load --------------------------------------------------------------------------------------


@dataclass
class Load:
    """Open-loop requests at ``RATE`` for ``BURST_S``, against whatever gateway ``target`` names now."""

    key: str
    target: str
    headers_for: Callable[[float, int], dict[str, str]] = lambda _t, _n: {}
    outcomes: list[Outcome] = field(default_factory=list)
    launched: int = 0

    def open_now(self) -> int:
        return self.launched - len(self.outcomes)

    async def run(self) -> None:
        limits = httpx.Limits(max_connections=MAX_IN_FLIGHT, max_keepalive_connections=64)
        gate = asyncio.Semaphore(MAX_IN_FLIGHT)
        async with httpx.AsyncClient(timeout=httpx.Timeout(30.0, connect=3.0), limits=limits) as client:
            start = time.monotonic()
            tasks: list[asyncio.Task[None]] = []
            for n in itertools.count():
                at = start + n / RATE
                if at - start >= BURST_S:
                    break
                await asyncio.sleep(max(0.0, at - time.monotonic()))
                self.launched += 1
                tasks.append(asyncio.create_task(self._one(client, gate, n, at - start)))
            await asyncio.gather(*tasks)

    async def _one(self, client: httpx.AsyncClient, gate: asyncio.Semaphore, n: int, t: float) -> None:
        async with gate:
            kind = KINDS[n % len(KINDS)]
            headers = {"x-sim-output-tokens": str(OUTPUT_TOKENS), **self.headers_for(t, n)}
            outcome = await send(client, self.target, self.key, kind, n, headers)
            outcome.started_s = round(t, 3)
            outcome.ended = time.monotonic()
            self.outcomes.append(outcome)


# ---- observing the gateway ---------------------------------------------------------------------------


class Watcher:
    """Samples the gateway's RSS (every 0.1 s) and its loop-lag gauge (every 0.5 s) while it runs."""

    def __init__(self) -> None:
        self.gateway: Gateway | None = None
        self.peak_rss = 0
        self.max_lag_s = 0.0
        self.lag_rises: list[tuple[float, float]] = []  # (seconds since start, new maximum in ms)
        self._began = time.monotonic()
        self._tasks: list[asyncio.Task[None]] = []

    def watch(self, gateway: Gateway) -> None:
        self.gateway = gateway

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._rss()), asyncio.create_task(self._lag())]

    async def stop(self) -> None:
        self.sample_hwm()
        await self.scrape()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def sample_hwm(self) -> None:
        """VmHWM: the kernel's own high-water mark of the process (catches peaks between samples)."""
        if self.gateway is None:
            return
        pids = [self.gateway.proc.pid, *self.gateway.proc.children()]
        for pid in pids:
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        self.peak_rss = max(self.peak_rss, int(line.split()[1]) * 1024)

    async def _rss(self) -> None:
        while True:
            self.sample_hwm()
            await asyncio.sleep(0.1)

    async def scrape(self) -> None:
        if self.gateway is None or not self.gateway.proc.alive():
            return
        with contextlib.suppress(httpx.HTTPError):
            async with httpx.AsyncClient(timeout=2.0) as client:
                text = (await client.get(self.gateway.url + "/metrics")).text
            for line in text.splitlines():
                if line.startswith("tollway_event_loop_lag_max_seconds"):
                    value = float(line.split()[-1])
                    if value > self.max_lag_s:
                        self.max_lag_s = value
                        self.lag_rises.append((round(time.monotonic() - self._began, 2), round(value * 1000, 1)))

    async def _lag(self) -> None:
        while True:
            await self.scrape()
            await asyncio.sleep(0.5)


# ---- the stores ----------------------------------------------------------------------------------------


def budget_state(redis_url: str, team_id: str) -> dict[str, Any]:
    """Live reservations, in-flight amounts and today's counted tokens of ``team_id`` in Redis."""
    import redis

    from app.budgets.windows import team_keys, windows_at

    client = redis.Redis.from_url(redis_url)
    try:
        keys = team_keys(team_id)
        records = client.hgetall(keys.reservations)
        inflight = {k.decode(): int(v) for k, v in client.hgetall(keys.inflight).items() if int(v)}
        day = client.hgetall(windows_at(team_id, "", time.time()).period_keys[1])
        live = [rid.decode().split("~", 1)[0] for rid, rec in records.items() if rec not in (b"s", b"x")]
        return {
            "live_reservations": len(live),
            "live_request_ids": live,  # a reservation id is the request id, "~", an attempt suffix
            "expired_reservations": sum(1 for rec in records.values() if rec == b"x"),
            "inflight": inflight,
            "counted_tokens": int(day.get(b"t:tpd", 0)),
        }
    finally:
        client.close()


async def ledger_rows(database_url: str, team_id: str) -> dict[str, tuple[int, int]]:
    """request id → (status, tokens) of every ledger row of ``team_id``."""
    import asyncpg

    conn = await asyncpg.connect(database_url.replace("postgresql+asyncpg://", "postgresql://", 1))
    try:
        rows = await conn.fetch(
            "SELECT request_id, status, input_tokens + output_tokens + cache_write_5m_tokens"
            " + cache_write_1h_tokens + cache_read_tokens AS tokens FROM usage_events WHERE team_id = $1",
            team_id,
        )
    finally:
        await conn.close()
    return {r["request_id"]: (int(r["status"]), int(r["tokens"])) for r in rows}


# ---- one fault -----------------------------------------------------------------------------------------


@dataclass
class Env:
    stack: Stack
    redis: RedisServer
    proxy: BackgroundProxy
    database_url: str  # direct, for counting
    work_dir: Path
    hostile: HostileProvider


@dataclass
class Run:
    """What a fault's driver hands back besides the outcomes."""

    notes: list[str] = field(default_factory=list)
    in_flight_at_kill: set[str] = field(default_factory=set)
    open_at_kill: int = 0  # requests sent and not yet answered when the gateway was SIGKILLed


Driver = Callable[[Env, Load, Watcher, Callable[[], Gateway]], Awaitable[Run]]


async def at(t: float, start: float) -> None:
    await asyncio.sleep(max(0.0, start + t - time.monotonic()))


async def during(load: Load, fault: Callable[[], Any], recover: Callable[[], Any]) -> Run:
    """Run the burst; ``fault`` at FAULT_AT_S and ``recover`` at RECOVER_AT_S (blocking calls, threaded)."""
    start = time.monotonic()
    burst = asyncio.create_task(load.run())
    await at(FAULT_AT_S, start)
    await asyncio.to_thread(fault)
    await at(RECOVER_AT_S, start)
    await asyncio.to_thread(recover)
    await burst
    return Run()


async def no_fault(env: Env, load: Load, watcher: Watcher, restart: Callable[[], Gateway]) -> Run:
    return await during(load, lambda: None, lambda: None)


async def malformed_replies(env: Env, load: Load, watcher: Watcher, restart: Callable[[], Gateway]) -> Run:
    load.headers_for = lambda t, n: (
        {"x-sim-malformed": MALFORMED[n % len(MALFORMED)]} if FAULT_AT_S <= t < RECOVER_AT_S else {}
    )
    return await during(load, lambda: None, lambda: None)


async def hostile_provider(env: Env, load: Load, watcher: Watcher, restart: Callable[[], Gateway]) -> Run:
    # Three behaviours against four kinds in turn: each behaviour meets every kind.
    load.headers_for = lambda t, n: (
        {HOSTILE_HEADER: HOSTILE[n % len(HOSTILE)]} if FAULT_AT_S <= t < RECOVER_AT_S else {}
    )
    run = await during(load, lambda: None, lambda: None)
    run.notes.append(f"hostile provider answered: {dict(sorted(env.hostile.counts.items()))}")
    return run


async def redis_stalled(env: Env, load: Load, watcher: Watcher, restart: Callable[[], Gateway]) -> Run:
    return await during(load, env.redis.pause, env.redis.resume)


async def redis_killed(env: Env, load: Load, watcher: Watcher, restart: Callable[[], Gateway]) -> Run:
    return await during(load, env.redis.stop, env.redis.start)


async def postgres_down(env: Env, load: Load, watcher: Watcher, restart: Callable[[], Gateway]) -> Run:
    return await during(load, env.proxy.cut, env.proxy.restore)


def both_down(env: Env) -> None:
    env.redis.stop()
    env.proxy.cut()


def both_up(env: Env) -> None:
    env.proxy.restore()
    env.redis.start()


async def redis_and_postgres_down(env: Env, load: Load, watcher: Watcher, restart: Callable[[], Gateway]) -> Run:
    return await during(load, lambda: both_down(env), lambda: both_up(env))


def cut_by(load: Load, moment: float) -> set[str]:
    """Request ids of answers that were open at ``moment`` and never completed."""
    return {o.request_id for o in load.outcomes if o.request_id and not o.complete and o.ended >= moment}


async def sigkill_in_double_outage(env: Env, load: Load, watcher: Watcher, restart: Callable[[], Gateway]) -> Run:
    """Both stores down at FAULT_AT_S, the gateway SIGKILLed a second later, both restored and the
    gateway restarted (same spool directory) at RECOVER_AT_S; the load goes on against the new one."""
    run = Run()
    start = time.monotonic()
    # Slower streams (24 tokens at 20/s), so that some are open when the process dies.
    load.headers_for = lambda t, n: {"x-sim-tokens-per-second": "20"}
    burst = asyncio.create_task(load.run())
    await at(FAULT_AT_S, start)
    await asyncio.to_thread(both_down, env)
    await at(FAULT_AT_S + 1.0, start)
    assert watcher.gateway is not None
    watcher.sample_hwm()
    await watcher.scrape()
    open_at_kill = run.open_at_kill = load.open_now()
    killed_at = time.monotonic()
    env.stack.kill(watcher.gateway)
    await at(RECOVER_AT_S, start)
    await asyncio.to_thread(both_up, env)
    restarting = time.monotonic()
    gateway = await asyncio.to_thread(restart)
    run.notes.append(f"restarted gateway ready {time.monotonic() - restarting:.1f} s after its start")
    load.target = gateway.url
    watcher.watch(gateway)
    await burst
    run.in_flight_at_kill = cut_by(load, killed_at)
    run.notes.append(
        f"SIGKILL at {FAULT_AT_S + 1.0:.1f} s with {open_at_kill} requests open; "
        f"{len(run.in_flight_at_kill)} answers that had a request id were cut by it"
    )
    return run


async def sigterm_with_streams(env: Env, load: Load, watcher: Watcher, restart: Callable[[], Gateway]) -> Run:
    """Answers of about 2.4 s (24 tokens at 10/s); SIGTERM at FAULT_AT_S + 1 s while a replacement
    gateway starts (a rolling restart): the load moves to it once it is ready."""
    run = Run()
    start = time.monotonic()
    load.headers_for = lambda t, n: {"x-sim-tokens-per-second": "10"}
    burst = asyncio.create_task(load.run())
    await at(FAULT_AT_S + 1.0, start)
    assert watcher.gateway is not None
    old = watcher.gateway
    watcher.sample_hwm()
    await watcher.scrape()
    open_at_term = load.open_now()
    began = time.monotonic()
    replacement = asyncio.create_task(asyncio.to_thread(restart))
    old.proc.signal(signal.SIGTERM)
    code = await asyncio.to_thread(old.proc.wait, 60)
    took = time.monotonic() - began
    old_peak = watcher.peak_rss
    await asyncio.to_thread(env.stack.stop, old.proc)
    gateway = await replacement
    ready_after = time.monotonic() - began
    load.target = gateway.url
    watcher.watch(gateway)
    watcher.peak_rss = old_peak
    await burst
    cut = cut_by(load, began)
    run.notes.append(
        f"SIGTERM at {FAULT_AT_S + 1.0:.1f} s with {open_at_term} requests open: exit code {code} after "
        f"{took:.2f} s; {len(cut)} answers with a request id did not complete; the replacement gateway was "
        f"ready {ready_after:.1f} s after the SIGTERM"
    )
    return run


FAULTS: dict[str, Driver] = {
    "none": no_fault,
    "provider-malformed-replies": malformed_replies,
    "hostile-provider": hostile_provider,
    "redis-stalled-3s": redis_stalled,
    "redis-killed-restarted": redis_killed,
    "postgres-down-3s": postgres_down,
    "redis-and-postgres-down-3s": redis_and_postgres_down,
    "sigkill-in-double-outage": sigkill_in_double_outage,
    "sigterm-with-streams-open": sigterm_with_streams,
}


# ---- running and measuring one fault -------------------------------------------------------------------


async def settle(env: Env, team_id: str, expected: set[str], killed: bool) -> float:
    """Wait until every answered request has its ledger row and nothing is in flight in Redis (or
    ``SETTLE_TIMEOUT_S``); the seconds it took. After a SIGKILL, the answers it cut can have no row
    and their reservations stay until they expire: only the rows are waited for, then 3 s more."""
    began = time.monotonic()
    while time.monotonic() - began < SETTLE_TIMEOUT_S:
        rows = await ledger_rows(env.database_url, team_id)
        state = await asyncio.to_thread(budget_state, env.redis.url, team_id)
        if expected <= rows.keys() and killed:
            await asyncio.sleep(3.0)
            break
        if expected <= rows.keys() and not state["inflight"] and not state["live_reservations"]:
            break
        await asyncio.sleep(0.5)
    return time.monotonic() - began


def gateway_settings(env: Env, name: str) -> dict[str, Any]:
    settings: dict[str, Any] = {
        "spool_dir": env.work_dir / f"spool-{name}",
        "loop_lag_probe_s": 0.01,
        "request_deadline_s": REQUEST_DEADLINE_S,
        "budget_mode": "strict",
        "budget_redis_failure": "closed",
        "log_level": "WARNING",
        # A deployment's breaker opens after 3 failures for 1 s (30 s by default), so the fault path is
        # exercised through the whole fault window rather than once before the breaker trips.
        "cooldown_s": COOLDOWN_S,
    }
    if name == "hostile-provider":
        settings["TOLLWAY_SIMULATOR_URL"] = env.hostile.url
    if name in PROVIDER_FAULTS:
        # The breakers would turn most of the fault window into quick 503s; here every request of the
        # window must reach the provider and be parsed, so they never trip.
        settings["cooldown_failures"] = 1_000_000
    return settings


async def warm_up(stack: Stack, gateway: Gateway) -> None:
    team = await asyncio.to_thread(stack.create_team, f"fm-warmup-{uuid.uuid4().hex[:6]}", gateway=gateway)
    key, _ = await asyncio.to_thread(stack.create_key, team["id"], gateway=gateway)
    async with httpx.AsyncClient(timeout=30.0) as client:
        for n in range(WARMUP_REQUESTS):
            await send(client, gateway.url, key, KINDS[n % len(KINDS)], n, {})
        await client.get(gateway.url + "/metrics")


class Control:
    """``bench.loop_lag_control`` beside the gateway: the machine's own loop-lag floor meanwhile."""

    def __init__(self) -> None:
        import subprocess

        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.loop_lag_control"], stdout=subprocess.PIPE, text=True
        )
        assert self.proc.stdout is not None
        self.proc.stdout.readline()  # "ready"

    def stop(self) -> float:
        self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=10)
        return float(out.strip() or "nan")


async def run_fault(env: Env, name: str, driver: Driver) -> dict[str, Any]:
    stack = env.stack
    settings = gateway_settings(env, name)
    starting = time.monotonic()
    gateway = await asyncio.to_thread(stack.start_gateway, **settings)
    start_s = time.monotonic() - starting
    team = await asyncio.to_thread(
        stack.create_team,
        f"fm-{name}-{uuid.uuid4().hex[:6]}",
        limits={"tokens_per_day": TOKENS_PER_DAY},
        gateway=gateway,
    )
    key, _ = await asyncio.to_thread(stack.create_key, team["id"], gateway=gateway)
    await warm_up(stack, gateway)
    watcher = Watcher()
    watcher.watch(gateway)
    watcher.start()
    load = Load(key, gateway.url)
    control = await asyncio.to_thread(Control)
    began = time.monotonic()
    run = await driver(env, load, watcher, lambda: stack.start_gateway(**settings))
    burst_s = time.monotonic() - began
    control_stall_ms = await asyncio.to_thread(control.stop)
    answered = {o.request_id for o in load.outcomes if o.request_id}
    killed = name.startswith("sigkill")
    settle_s = await settle(env, team["id"], answered - run.in_flight_at_kill, killed)
    await watcher.stop()
    assert watcher.gateway is not None
    exit_code = await asyncio.to_thread(stack.stop, watcher.gateway.proc)
    rows = await ledger_rows(env.database_url, team["id"])
    state = await asyncio.to_thread(budget_state, env.redis.url, team["id"])
    lost = answered - rows.keys()
    ledger_tokens = sum(tokens for _, tokens in rows.values())
    statuses = Counter(str(o.status) for o in load.outcomes)
    return {
        "fault": name,
        "requests": len(load.outcomes),
        "statuses": dict(sorted(statuses.items())),
        "error_types": dict(Counter(f"{o.status} {o.error_type}" for o in load.outcomes if o.error_type)),
        "client_errors": dict(Counter(o.error for o in load.outcomes if o.error)),
        "answers_incomplete": sum(1 for o in load.outcomes if o.status and not o.complete),
        "streams_ended_by_error_event": sum(1 for o in load.outcomes if o.error_event),
        "with_request_id": len(answered),
        "rows_written": len(rows),
        "rows_lost": len(lost),
        "rows_lost_in_flight_at_kill": len(lost & run.in_flight_at_kill),
        "rows_lost_completed": len(lost - run.in_flight_at_kill),
        "open_at_kill": run.open_at_kill,
        "orphaned_reservations": state["live_reservations"] + len(state["inflight"]),
        # Orphans of requests that finished and were recorded: their settle never reached Redis.
        "orphans_with_ledger_row": sum(1 for rid in state["live_request_ids"] if rid in rows),
        "inflight_tokens_left": sum(state["inflight"].values()),
        "expired_reservations": state["expired_reservations"],
        "limit_tokens": TOKENS_PER_DAY,
        "ledger_tokens": ledger_tokens,
        "counted_tokens": state["counted_tokens"],
        "overspend_tokens": max(0, max(ledger_tokens, state["counted_tokens"]) - TOKENS_PER_DAY),
        "counted_minus_ledger": state["counted_tokens"] - ledger_tokens,
        "max_loop_stall_ms": round(watcher.max_lag_s * 1000, 1),
        "loop_stall_rises": watcher.lag_rises,
        "control_loop_stall_ms": control_stall_ms,
        "peak_rss_mib": round(watcher.peak_rss / (1 << 20), 1),
        "gateway_start_s": round(start_s, 1),
        "burst_s": round(burst_s, 2),
        "settle_s": round(settle_s, 2),
        "final_exit_code": exit_code,
        "notes": run.notes,
    }


# ---- the whole matrix ------------------------------------------------------------------------------------


async def matrix(names: list[str], work_dir: Path) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    with RedisServer(durable=True) as redis_server:
        async with fresh_database(POSTGRES) as database_url:
            proxy = BackgroundProxy(database_url)
            hostile = HostileProvider()
            await hostile.start()
            try:
                with Stack(work_dir, database_url=proxy.url, redis_url=redis_server.url) as stack:
                    env = Env(stack, redis_server, proxy, database_url, work_dir, hostile)
                    for name in names:
                        print(f"fault matrix: {name} ...", file=sys.stderr, flush=True)
                        result = await run_fault(env, name, FAULTS[name])
                        print(f"  {json.dumps(result)}", file=sys.stderr, flush=True)
                        results.append(result)
            finally:
                await hostile.aclose()
                proxy.close()
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--faults", nargs="*", choices=list(FAULTS), default=list(FAULTS))
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--render", action="store_true", help="only rewrite docs/fault-matrix.md from --out")
    args = parser.parse_args(argv)
    if args.render:
        write_doc(json.loads(args.out.read_text()))
        return 0
    load_before = os.getloadavg()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="tollway-fault-matrix-") as tmp:
        results = asyncio.run(matrix(args.faults, Path(tmp)))
    report = {
        "command": "python -m bench.fault_matrix"
        + (f" --faults {' '.join(args.faults)}" if args.faults != list(FAULTS) else ""),
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": psutil.cpu_count(),
            "memory_gib": round(psutil.virtual_memory().total / (1 << 30), 1),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "duration_s": round(time.monotonic() - started, 1),
        "workload": {
            "rate_per_s": RATE,
            "burst_s": BURST_S,
            "fault_from_s": FAULT_AT_S,
            "fault_until_s": RECOVER_AT_S,
            "kinds": list(KINDS),
            "max_tokens": MAX_TOKENS,
            "team_tokens_per_day": TOKENS_PER_DAY,
            "request_deadline_s": REQUEST_DEADLINE_S,
            "breaker_cooldown_s": COOLDOWN_S,
            "warmup_requests": WARMUP_REQUESTS,
        },
        "faults": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    if args.out == RESULTS:
        write_doc(report)
    print(render_table(report))
    return 0


# ---- the documented bounds, and the table in docs/fault-matrix.md ---------------------------------------

DOC = Path(__file__).resolve().parent.parent / "docs" / "fault-matrix.md"
BEGIN, END = "<!-- fault-matrix:begin -->", "<!-- fault-matrix:end -->"
STALL_BOUND_MS = 100.0
RSS_HEADROOM_MIB = 64.0
BATCH = 8  # one ledger batch: TOLLWAY_LEDGER_FLUSH_INTERVAL_S (0.2 s) of requests at RATE (40/s)


def bounds(result: dict[str, Any], baseline_rss: float) -> dict[str, tuple[str, bool]]:
    """Per number: the documented bound (text) and whether the result is within it."""
    killed = result["fault"].startswith("sigkill")
    lost_bound = result["rows_lost_in_flight_at_kill"] + BATCH if killed else 0
    rss_bound = baseline_rss + RSS_HEADROOM_MIB
    return {
        "rows_written": (
            "one per answered request",
            result["rows_written"] >= result["with_request_id"] - result["rows_lost"],
        ),
        "rows_lost": (
            f"≤ cut by the kill ({result['rows_lost_in_flight_at_kill']}) + one batch ({BATCH})" if killed else "0",
            result["rows_lost"] <= lost_bound,
        ),
        "orphaned_reservations": (
            f"≤ open at the kill ({result['open_at_kill']}), until they expire (900 s)" if killed else "0",
            result["orphaned_reservations"] <= (result["open_at_kill"] if killed else 0),
        ),
        "overspend_tokens": ("0", result["overspend_tokens"] == 0),
        # Usage Redis counted for a request whose ledger row the kill lost (the ledger's un-fsync'd
        # batch): at most each lost row's worst case. Never negative: nothing used goes uncounted.
        "counted_minus_ledger": (
            f"0 … lost rows × {REQUEST_TOKENS_BOUND}" if killed else "0",
            0 <= result["counted_minus_ledger"] <= (result["rows_lost"] * REQUEST_TOKENS_BOUND if killed else 0),
        ),
        "max_loop_stall_ms": (f"≤ {STALL_BOUND_MS:.0f} ms", result["max_loop_stall_ms"] <= STALL_BOUND_MS),
        "peak_rss_mib": (f"≤ {rss_bound:.0f} MiB", result["peak_rss_mib"] <= rss_bound),
    }


def _cell(value: Any, bound: tuple[str, bool]) -> str:
    return f"{value}" if bound[1] else f"**{value}** ✗"


def render_table(report: dict[str, Any]) -> str:
    faults = report["faults"]
    baseline = next((f for f in faults if f["fault"] == "none"), faults[0])
    w = report["workload"]
    lines = [
        f"Measured {report['when']} with `{report['command']}` ({report['duration_s']:.0f} s) on "
        f"{report['machine']['cpus']} CPUs, {report['machine']['memory_gib']} GiB, Python "
        f"{report['machine']['python']}; load average {report['load_average_before'][0]} before, "
        f"{report['load_average_after'][0]} after (the machine is shared). Each fault: "
        f"{w['rate_per_s']:.0f} requests/s for {w['burst_s']:.0f} s, fault from {w['fault_from_s']:.0f} s to "
        f"{w['fault_until_s']:.0f} s, team budget {w['team_tokens_per_day']:,} tokens/day.",
        "",
        "| fault | requests | answered (status: count) | rows written | rows lost | orphaned reservations |"
        " overspend (tokens) | Redis − ledger (tokens) | max loop stall (ms) | idle control (ms) | peak RSS (MiB) |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for f in faults:
        b = bounds(f, baseline["peak_rss_mib"])
        statuses = ", ".join(f"{k}: {v}" for k, v in f["statuses"].items())
        lines.append(
            f"| {f['fault']} | {f['requests']} | {statuses} | {_cell(f['rows_written'], b['rows_written'])} | "
            f"{_cell(f['rows_lost'], b['rows_lost'])} | "
            f"{_cell(f['orphaned_reservations'], b['orphaned_reservations'])} | "
            f"{_cell(f['overspend_tokens'], b['overspend_tokens'])} | "
            f"{_cell(f['counted_minus_ledger'], b['counted_minus_ledger'])} | "
            f"{_cell(f['max_loop_stall_ms'], b['max_loop_stall_ms'])} | {f['control_loop_stall_ms']} | "
            f"{_cell(f['peak_rss_mib'], b['peak_rss_mib'])} |"
        )
    lines += [
        "",
        "Status 0: no HTTP answer (connection refused while no gateway listened, or closed before an answer).",
        "",
        "The bounds (✗ marks a number outside its bound; see *The bounds* below):",
        "",
    ]
    lines += ["| fault | rows lost | orphaned reservations | overspend | Redis − ledger | loop stall | peak RSS |"]
    lines += ["|---|---|---|---|---|---|---|"]
    for f in faults:
        b = bounds(f, baseline["peak_rss_mib"])
        keys = ("rows_lost", "orphaned_reservations", "overspend_tokens", "counted_minus_ledger")
        cells = [b[k][0] for k in (*keys, "max_loop_stall_ms", "peak_rss_mib")]
        lines.append(f"| {f['fault']} | " + " | ".join(cells) + " |")
    notes = [f"- {f['fault']}: {note}" for f in faults for note in f["notes"]]
    if notes:
        lines += ["", "Notes from the run:", "", *notes]
    return "\n".join(lines)


def write_doc(report: dict[str, Any]) -> None:
    """Replace the generated part of docs/fault-matrix.md (between the markers) with this run's table."""
    text = DOC.read_text() if DOC.exists() else f"# Fault matrix\n\n{BEGIN}\n{END}\n"
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    DOC.write_text(f"{head}{BEGIN}\n{render_table(report)}\n{END}{tail}")


if __name__ == "__main__":
    sys.exit(main())
